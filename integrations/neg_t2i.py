"""Neg-T2I evaluation: does the negated object stay out of the generated image? Stock vs swapped encoder.

After TNG-CLIP's Neg-TtoI and NegationCLIP's negation score: for prompts that negate an object ("a street
without cars"), generate images with the pipeline's stock text encoder and with the negation-aware one (same
seeds), ask a judge how present the negated object is, and count a success when every negated object is
judged absent. Judges are pluggable (anything with ``name`` and ``presence(images, object_name)``):

* ``clip:SPEC`` - CLIP presence score: softmax over ("a photo of a {object}.", "a photo.") image-text logits.
* ``owlvit:PATH`` - zero-shot detector (transformers OWL-ViT): the highest box score for "a photo of a {object}".

Writes ``report.json`` (per prompt scores + summary) and one image grid per variant (rows = prompts), atomically::

    negclip t2i-eval ./sd15 --encoder negationclip_ViT-L14.pth --prompts prompts.txt --judge clip:ViT-L-14:openai --out runs/t2i
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import click
import torch

from negation_plugins.atomic import atomic_write, atomic_write_text
from negation_plugins.checks import OutputPath
from negation_plugins.hookspecs import hookimpl
from negation_plugins.textfiles import read_text

from . import prompting

VARIANTS = ("stock", "negation")


@dataclass
class NegatedPrompt:
    prompt: str
    objects: list[str]


class Judge(Protocol):
    name: str
    threshold: float

    def presence(self, images: Sequence, object_name: str) -> list[float]:
        """Presence score in [0, 1] of ``object_name`` in each image (>= threshold: present)."""


class ClipPresenceJudge:
    """Presence = softmax(logit_scale * [sim(image, "a photo of a {obj}."), sim(image, "a photo.")])[0]."""

    name = "clip"
    threshold = 0.5

    def __init__(self, clip, device: str = "cpu"):
        from negation_plugins import ClipBundle, load_clip

        self.clip = clip if isinstance(clip, ClipBundle) else load_clip(clip, device=device)
        if not self.clip.has_vision:
            raise ValueError(f"judge clip:{self.clip.spec} is text-only; a presence judge needs a vision tower")

    def presence(self, images, object_name):
        image_features = self.clip.encode_image(list(images))
        text_features = self.clip.encode_text([f"a photo of a {object_name}.", "a photo."])
        logits = self.clip.logit_scale * image_features @ text_features.T
        return logits.softmax(dim=-1)[:, 0].tolist()


class OwlVitJudge:
    """Presence = the highest sigmoid box score of OWL-ViT for the query "a photo of a {obj}"."""

    name = "owlvit"
    threshold = 0.1

    def __init__(self, model, processor=None, device: str = "cpu"):
        from transformers import OwlViTForObjectDetection, OwlViTProcessor

        if isinstance(model, (str, Path)):
            processor = processor or OwlViTProcessor.from_pretrained(model)
            model = OwlViTForObjectDetection.from_pretrained(model).to(device)
        if processor is None:
            raise ValueError("OwlVitJudge needs the processor that belongs to the given model")
        self.model, self.processor = model.eval(), processor

    @torch.no_grad()
    def presence(self, images, object_name):
        images = list(images)
        queries = [[f"a photo of a {object_name}"]] * len(images)
        inputs = self.processor(text=queries, images=images, padding="max_length", truncation=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        logits = self.model(**inputs).logits  # (images, boxes, queries)
        return logits.sigmoid().amax(dim=(1, 2)).tolist()


JUDGES = {"clip": ClipPresenceJudge, "owlvit": OwlVitJudge}


def make_judge(spec: str, device: str = "cpu") -> Judge:
    """``clip:<load_clip spec>`` or ``owlvit:<transformers folder or hub id>``, loaded on ``device``."""
    kind, _, argument = spec.partition(":")
    if kind not in JUDGES or not argument:
        raise ValueError(f"judge {spec!r}: use one of {', '.join(f'{k}:SPEC' for k in JUDGES)}")
    return JUDGES[kind](argument, device=device)


def read_prompts(path: str | Path) -> list[NegatedPrompt]:
    """Prompts from ``.jsonl`` ({"prompt", "objects": [...]}) or text (one per line, objects read from the prompt)."""
    path = Path(path)
    prompts = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error})") from error
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{where}: a record needs a string 'prompt'")
            objects = record.get("objects") or ([record["object"]] if record.get("object") else None)
            if objects is None:
                objects = prompting.split_negations(record["prompt"])[1]
            prompt = record["prompt"]
        else:
            prompt = line.strip()
            objects = prompting.split_negations(prompt)[1]
        if not objects or not all(isinstance(o, str) and o for o in objects):
            raise ValueError(
                f"{where}: no negated object in {prompt!r} (write 'without X' / 'no X', or give 'objects')"
            )
        prompts.append(NegatedPrompt(prompt, list(objects)))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def generate(pipe, prompts: Sequence[NegatedPrompt], *, steps, size, seed, images_per_prompt, route=False):
    """Images per prompt (fixed seeds per prompt and image, so variants see the same noise)."""
    from tqdm.auto import tqdm

    images = []
    for index, item in enumerate(tqdm(prompts, desc="generating", leave=False)):
        kwargs = prompting.route_negations(item.prompt).pipeline_kwargs() if route else {"prompt": item.prompt}
        generators = [torch.Generator("cpu").manual_seed(seed + 1000 * index + k) for k in range(images_per_prompt)]
        out = pipe(
            **kwargs,
            num_inference_steps=steps,
            height=size,
            width=size,
            generator=generators,
            num_images_per_prompt=images_per_prompt,
        )
        images.append(out.images)
    return images


def evaluate(
    pipe,
    prompts: Sequence[NegatedPrompt],
    source,
    judge: Judge,
    *,
    steps: int = 25,
    size: int | None = None,
    seed: int = 0,
    images_per_prompt: int = 1,
    route_negations: bool = False,
    out_dir: str | Path | None = None,
) -> dict:
    """Generate with the stock and the swapped encoder, judge the negated objects, return (and write) the report."""
    import negation_plugins
    from integrations import restore

    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor

    def generate_all() -> list:  # the same seeds for both encoders: the images differ only by the encoder
        return generate(
            pipe, prompts, steps=steps, size=size, seed=seed, images_per_prompt=images_per_prompt, route=route_negations
        )

    results = {"stock": generate_all()}
    negation_plugins.apply(pipe, source)
    try:
        results["negation"] = generate_all()
    finally:
        restore(pipe)

    rows, summary = [], {}
    for variant in VARIANTS:
        successes, presences = 0, []
        for index, item in enumerate(prompts):
            images = results[variant][index]
            scores = {obj: judge.presence(images, obj) for obj in item.objects}
            absent = [all(scores[obj][k] < judge.threshold for obj in item.objects) for k in range(len(images))]
            successes += sum(absent)
            presences += [s for values in scores.values() for s in values]
            if variant == VARIANTS[0]:
                rows.append({"prompt": item.prompt, "objects": item.objects})
            rows[index][variant] = {"presence": scores, "absent": absent}
        total = len(prompts) * images_per_prompt
        summary[variant] = {
            "negation_success_rate": successes / total,
            "mean_presence": sum(presences) / len(presences),
        }
    report = {
        "summary": summary,
        "prompts": rows,
        "settings": {
            "source": str(getattr(source, "spec", source)),
            "judge": judge.name,
            "threshold": judge.threshold,
            "steps": steps,
            "size": size,
            "seed": seed,
            "images_per_prompt": images_per_prompt,
            "route_negations": route_negations,
            "device": str(pipe.device),
            "dtype": str(pipe.dtype).removeprefix("torch."),
        },
    }
    if out_dir is not None:
        write_outputs(out_dir, report, results, images_per_prompt)
    return report


def write_outputs(out_dir, report, results, images_per_prompt) -> None:
    from diffusers.utils import make_image_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for variant, per_prompt in results.items():
        grid = make_image_grid(
            [img for images in per_prompt for img in images], rows=len(per_prompt), cols=images_per_prompt
        )
        atomic_write(out_dir / f"grid_{variant}.png", lambda path, grid=grid: grid.save(path, format="PNG"))
    report["grids"] = {variant: f"grid_{variant}.png" for variant in results}
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))


@hookimpl
def register_commands(cli):
    @cli.command(name="t2i-eval")
    @click.argument("pipeline")
    @click.option(
        "--encoder",
        required=True,
        help="Negation-aware encoder: any load_clip spec (.pth, local-dir:, hf-hub:, folder).",
    )
    @click.option(
        "--prompts",
        "prompts_path",
        required=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Text (one prompt per line) or JSONL ({'prompt', 'objects'}).",
    )
    @click.option("--judge", "judge_spec", required=True, help="clip:<load_clip spec> or owlvit:<folder or hub id>.")
    @click.option(
        "--out", "out_dir", required=True, type=OutputPath(folder=True), help="Folder for report.json and grids."
    )
    @click.option("--steps", default=25, show_default=True, type=click.IntRange(min=1))
    @click.option(
        "--size", type=click.IntRange(min=8), default=None, help="Image side in pixels (default: the pipeline's)."
    )
    @click.option("--seed", default=0, show_default=True)
    @click.option("--images-per-prompt", default=1, show_default=True, type=click.IntRange(min=1))
    @click.option("--route-negations", is_flag=True, help="Also move 'without X' into the negative prompt.")
    @click.option("--device", default=None, help="Where to generate and judge [default: cuda when present, else cpu].")
    @click.option(
        "--precision",
        type=click.Choice(["bf16", "fp32"]),
        default=None,
        help="The pipeline's dtype (the swapped encoder follows it) [default: bf16 on cuda, fp32 on cpu].",
    )
    def t2i_eval(pipeline, encoder, prompts_path, judge_spec, out_dir, device, precision, **generation):
        """Neg-T2I: generate for negating prompts with stock vs negation-aware encoder; judge the negated objects."""
        from diffusers import DiffusionPipeline

        from negation_plugins.benchmarks.suite import PRECISIONS, pick_eval_device

        try:
            device, precision = pick_eval_device(device, precision, "negclip t2i-eval")
            prompts = read_prompts(prompts_path)
            judge = make_judge(judge_spec, device=device)
            pipe = DiffusionPipeline.from_pretrained(pipeline, torch_dtype=getattr(torch, PRECISIONS[precision]))
            pipe = pipe.to(device)
        except (ValueError, OSError) as error:  # bad prompts/judge, or a pipeline that does not load (named)
            raise click.ClickException(" ".join(str(error).split())) from None
        pipe.set_progress_bar_config(disable=True)
        # the generation options (--steps, --size, --seed, --images-per-prompt, --route-negations) go as they are
        report = evaluate(pipe, prompts, encoder, judge, out_dir=out_dir, **generation)
        for variant, figures in report["summary"].items():
            click.echo(
                f"{variant:<9} negation success {figures['negation_success_rate']:.3f}  mean presence {figures['mean_presence']:.3f}"
            )
        click.echo(f"wrote {Path(out_dir) / 'report.json'}")
