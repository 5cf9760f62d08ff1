"""What the page computes, without Gradio: the models (loaded once, on first use), comparisons and generation.

Every number the page shows comes from the functions behind ``negclip compare`` (:func:`compare_on_image`,
:func:`compare_texts`, :func:`compare_probe`), called on models built the way that command builds them, so the page
and ``negclip compare --json`` agree for the same image, captions, models and corrections.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from ..checks import own_message
from ..commands import compare_on_image, compare_probe, compare_texts

logger = logging.getLogger(__name__)

DEMO_MODEL = Path("negclip-demo") / "model"  # where `negclip demo` (default --output) writes its fine-tuned model
DEMO_COMMAND = "negclip demo"
BUILT_IN_CORRECTIONS = ("span-subtraction",)
PICK_MARK = " ✔"
LOAD_ERRORS = (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError)

Progress = Callable[[str], None]


class AppError(ValueError):
    """Something the page or the command line reports as one line (a bad model name, too few captions, ...)."""


def one_line(error: BaseException) -> str:
    text = own_message(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_model_name(spec: str) -> None:
    """Fail now, in one line, for a name no backend reads (a Hub name is only looked up when first used)."""
    from .. import plugins
    from ..hub import HubNameError, parse_hub_name

    try:
        if parse_hub_name(spec) is not None:
            return
    except HubNameError as err:
        raise AppError(str(err)) from None
    if spec.startswith("local-dir:"):
        folder = Path(spec.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise AppError(f"--model {spec}: {folder} is not an open_clip folder (no open_clip_config.json)")
        return
    if not any(backend.can_load(spec) for backend in plugins.get("backends").values()):
        raise AppError(
            f"--model {spec}: no backend reads it (not an open_clip name, local-dir: folder, checkpoint file, "
            "transformers folder or Hub name; see `negclip compare --help`)"
        )


def check_corrections(specs: Sequence[str]) -> list[str]:
    """The correction toggles the page offers: the built-ins and every ``--correction`` (checked now, one line)."""
    from ..corrections import parse_corrections

    try:
        parse_corrections(list(specs))
    except ValueError as err:
        raise AppError(f"--correction: {one_line(err)}") from None
    return list(dict.fromkeys([*BUILT_IN_CORRECTIONS, *specs]))


class Models:
    """The models the page compares, each loaded once on first use; safe to share between browser sessions."""

    def __init__(self, names: Sequence[str], device: str = "cpu"):
        self.names = list(dict.fromkeys(names))
        self.device = device
        self._loaded: dict = {}
        self._lock = threading.Lock()

    def get(self, name: str, progress: Progress | None = None):
        from ..factory import load_clip

        if name not in self.names:
            raise AppError(f"{name}: not one of this page's models ({', '.join(self.names)})")
        with self._lock:
            if name not in self._loaded:
                message = f"loading {name} (first use; kept for the next requests)"
                logger.info(message)
                if progress is not None:
                    progress(message)
                try:
                    self._loaded[name] = load_clip(name, device=self.device)
                except LOAD_ERRORS as err:
                    raise AppError(one_line(err)) from None
            return self._loaded[name]

    def clips(self, names: Sequence[str], corrections: Sequence[str] = (), progress: Progress | None = None) -> dict:
        """``{label: bundle}`` as ``negclip compare NAMES --correction ...`` builds it: each model, then (with
        corrections) the same model with all of them stacked on."""
        if not names:
            raise AppError("choose at least one model")
        clips = {}
        for name in names:
            clip = self.get(name, progress)
            clips[name] = clip
            if corrections:
                try:
                    corrected = clip.with_corrections(list(corrections))
                except ValueError as err:
                    raise AppError(one_line(err)) from None
                clips[corrected.spec] = corrected
        return clips


def parse_captions(text: str, at_least: int = 2) -> list[str]:
    """One caption per line; blank lines ignored."""
    captions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(captions) < at_least:
        raise AppError(f"type at least {at_least} captions, one per line (e.g. one with and one without 'no')")
    return captions


def upload_roots() -> list[Path]:
    """Where the page may read images from: Gradio's upload folder and this process's example scenes."""
    import tempfile

    gradio_dir = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return [Path(gradio_dir).resolve(), *(p.resolve() for p in _example_dirs)]


_example_dirs: list[Path] = []


def read_upload(path: str | os.PathLike | None):
    """The RGB image the page was given, read like ``negclip compare --image`` reads it; a path outside the upload
    and example folders is refused (the page must never be a way to open the server's files)."""
    from ..images import ImageDecodeError, load_rgb

    if path is None:
        raise AppError("upload an image (or pick an example) first")
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(root) for root in upload_roots()):
        raise AppError(f"{Path(path).name}: not an uploaded file")
    try:
        return load_rgb(resolved)
    except ImageDecodeError as err:
        raise AppError(str(err)) from None


def compare_image(models: Models, names, image_path, captions_text: str, corrections=(), progress=None) -> dict:
    """``negclip compare NAMES --image IMAGE --text ... --json`` (less the ``image`` key, a server path)."""
    captions = parse_captions(captions_text)
    image = read_upload(image_path)
    clips = models.clips(names, corrections, progress)
    try:
        return compare_on_image(clips, image, captions)
    except ValueError as err:
        raise AppError(one_line(err)) from None


def probe(models: Models, names, captions_text: str, corrections=(), progress=None) -> tuple[dict, dict]:
    """The typed captions' pairwise cosines (``negclip compare NAMES --text ...``) and the built-in negation probe
    (``negclip compare NAMES``), for the same models."""
    captions = parse_captions(captions_text)
    clips = models.clips(names, corrections, progress)
    try:
        return compare_texts(clips, captions), compare_probe(clips)
    except ValueError as err:
        raise AppError(one_line(err)) from None


def short_label(spec: str) -> str:
    """A column label: a local folder's name, else the spec itself (the full specs are in the legend)."""
    head, plus, rest = spec.partition(" + ")
    if head.startswith("local-dir:"):
        path = Path(head.removeprefix("local-dir:"))
        head = path.name if path.name not in ("model", "base_model") else f"{path.parent.name}/{path.name}"
    return head + (plus + rest.split(":", 1)[0] if plus else "")


def bar_chart(result: dict):
    """Grouped bars: each model's probability for each caption (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts, rows = result["texts"], result["models"]
    width = 0.8 / len(rows)
    figure, axes = plt.subplots(figsize=(8, 0.6 + 0.5 * len(texts) * max(1, len(rows) / 2)), dpi=100)
    for m, row in enumerate(rows):
        positions = [t + (m - (len(rows) - 1) / 2) * width for t in range(len(texts))]
        axes.barh(positions, row["probabilities"], height=width, label=f"[{m + 1}] {short_label(row['model'])}")
    axes.set_yticks(range(len(texts)), [_clip_text(t) for t in texts], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("probability (softmax over the captions)")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    plt.close(figure)
    return figure


def _clip_text(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Example:
    """A held-out world scene with its captions: true, true negation, wrong negation (names a present object)."""

    image: Path
    captions: list[str] = field(default_factory=list)


def world_examples(n: int = 4, folder: Path | None = None) -> list[Example]:
    """Render ``n`` held-out scenes (val split) of the default world, with two or more objects, to ``folder``."""
    import tempfile

    from ..world import WorldConfig, generate_scenes, render
    from ..world.captions import join_list

    config = WorldConfig()
    n_val = max(1, round(config.n_images * config.val_fraction))
    held_out = generate_scenes(config.n_images, config.seed)[-n_val:]
    folder = Path(folder or tempfile.mkdtemp(prefix="negclip-app-examples-"))
    folder.mkdir(parents=True, exist_ok=True)
    _example_dirs.append(folder)
    examples = []
    for scene in (s for s in held_out if len(s.objects) >= 2):
        present = [o.phrase for o in scene.objects]
        path = folder / f"scene-{scene.id:06d}.png"
        render(scene, config.image_size).save(path)
        captions = [
            f"{join_list(present)}.",
            f"{join_list(present)}, but no {scene.absent[0]}.",
            f"{join_list(present[:-1])}, but no {scene.objects[-1].category}.",
        ]
        examples.append(Example(path, captions))
        if len(examples) == n:
            break
    return examples


def default_models(demo_model: Path = DEMO_MODEL) -> tuple[list[str], str]:
    """The embedded default: the shipped world base model, and the demo's fine-tuned model when `negclip demo` has
    written one; plus a note for the page."""
    from ..world.shipped import FOLDER

    names = [f"local-dir:{FOLDER}"]
    if (demo_model / "open_clip_config.json").is_file():
        names.append(f"local-dir:{demo_model.resolve()}")
        return names, f"Models: the synthetic world's base model and the fine-tuned model in `{demo_model}`."
    return names, (
        "Models: the synthetic world's base model only. Run `negclip demo` (about 5 minutes on a CPU) in this folder "
        "and restart `negclip app` to compare it with the fine-tuned model it writes to `negclip-demo/model`."
    )


class Cancelled(AppError):
    """Generation stopped by the user."""


class Generator:
    """A diffusers pipeline (loaded once, on first use) run twice per prompt: stock text encoder, then a model's
    encoder swapped in with :func:`negation_plugins.apply`, same seed. Callers serialise runs (the page's queue)."""

    def __init__(self, name: str, device: str = "cpu"):
        self.name = name
        self.device = device
        self._pipe = None
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # one generation at a time, even one the page stopped waiting for

    def pipeline(self, progress: Progress | None = None):
        with self._lock:
            if self._pipe is None:
                self._pipe = self._load(progress)
            return self._pipe

    def _load(self, progress):
        import torch
        from diffusers import DiffusionPipeline

        from .. import plugins

        message = f"loading pipeline {self.name} (first use; kept for the next requests)"
        logger.info(message)
        if progress is not None:
            progress(message)
        dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        try:
            pipe = DiffusionPipeline.from_pretrained(self.name, torch_dtype=dtype).to(self.device)
        except LOAD_ERRORS as err:
            raise AppError(f"--pipeline {self.name}: {one_line(err)}") from None
        if not any(i.matches(pipe) for i in plugins.get("integrations").values()):
            raise AppError(
                f"--pipeline {self.name}: a {type(pipe).__name__}, which no integration handles (the page generates "
                "with Stable Diffusion 1.x/2.x/SDXL pipelines)"
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pair(
        self,
        prompt: str,
        encoder,
        *,
        seed: int = 0,
        steps: int = 25,
        guidance: float = 7.5,
        route: bool = False,
        step_done: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        progress: Progress | None = None,
    ):
        """(stock image, negation-aware image, the prompt kwargs used): one prompt, same seed, two text encoders."""
        if not (prompt or "").strip():
            raise AppError("type a prompt")
        pipe = self.pipeline(progress)
        with self._run_lock:
            return self._pair(pipe, prompt, encoder, seed, steps, guidance, route, step_done, cancelled)

    def _pair(self, pipe, prompt, encoder, seed, steps, guidance, route, step_done, cancelled):
        import torch

        from integrations.pipelines import restore
        from integrations.prompting import route_negations

        from .. import apply

        kwargs = route_negations(prompt).pipeline_kwargs() if route else {"prompt": prompt, "negative_prompt": None}

        def run(steps_before: int):
            def on_step(pipe, step, timestep, tensors):
                if cancelled():
                    pipe._interrupt = True  # diffusers' own stop flag: the remaining steps are skipped
                if step_done is not None:
                    step_done(steps_before + step + 1, 2 * steps)
                return tensors

            generator = torch.Generator(device=pipe.device).manual_seed(int(seed))
            image = pipe(
                **kwargs,
                num_inference_steps=int(steps),
                guidance_scale=float(guidance),
                generator=generator,
                callback_on_step_end=on_step,
            ).images[0]
            if cancelled():
                raise Cancelled("generation cancelled")
            return image

        stock = run(0)
        try:
            apply(pipe, encoder)
        except (ValueError, TypeError) as err:
            raise AppError(one_line(err)) from None
        try:
            aware = run(int(steps))
        finally:
            restore(pipe)
        return stock, aware, kwargs


def _legend(result: dict) -> str:
    items = "".join(f"<li>[{n}] <code>{escape(row['model'])}</code></li>" for n, row in enumerate(result["models"], 1))
    return f'<ul class="negclip-legend">{items}</ul>'


def image_table_html(result: dict) -> str:
    """:func:`compare_image`'s result as a table: a row per caption, probability and cosine per model, the pick
    marked. Each cell carries its exact value (``data-value``) next to the rounded text."""
    rows = result["models"]
    head = "".join(f'<th colspan="2">[{n}] {escape(short_label(r["model"]))}</th>' for n, r in enumerate(rows, 1))
    sub = "<th>probability</th><th>cosine</th>" * len(rows)
    body = []
    for t, text in enumerate(result["texts"]):
        cells = []
        for m, row in enumerate(rows):
            pick = row["argmax"] == t
            probability, cosine = row["probabilities"][t], row["cosines"][t]
            cells.append(
                f'<td class="prob{" pick" if pick else ""}" data-model="{m}" data-value="{probability!r}">'
                f"{probability:.4f}{PICK_MARK if pick else ''}</td>"
                f'<td class="cosine" data-model="{m}" data-value="{cosine!r}">{cosine:.4f}</td>'
            )
        body.append(f'<tr><td class="caption">{escape(text)}</td>{"".join(cells)}</tr>')
    return (
        f'<table class="negclip-table" id="compare-table"><thead><tr><th rowspan="2">caption</th>{head}</tr>'
        f"<tr>{sub}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<p>{PICK_MARK.strip()} the caption each model picks for the image (softmax over the captions)</p>"
        + _legend(result)
    )


def text_table_html(result: dict) -> str:
    """:func:`compare_texts`'s result: the cosine between every two captions, per model."""
    rows = result["models"]
    head = "".join(f"<th>[{n}] {escape(short_label(r['model']))}</th>" for n, r in enumerate(rows, 1))
    body = []
    for p, (i, j) in enumerate(result["pairs"]):
        pair = f"{escape(result['texts'][i])} ↔ {escape(result['texts'][j])}"
        cells = "".join(f'<td data-value="{r["cosines"][p]!r}">{r["cosines"][p]:.4f}</td>' for r in rows)
        body.append(f'<tr><td class="caption">{pair}</td>{cells}</tr>')
    return (
        "<p>Cosine between your captions (near 1: the model reads them alike)</p>"
        f'<table class="negclip-table" id="caption-table"><thead><tr><th>captions</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>" + _legend(result)
    )


def probe_table_html(result: dict) -> str:
    """:func:`compare_probe`'s result: the built-in negation probe per model."""
    first = result["models"][0]["probe"]
    body = []
    for n, row in enumerate(result["models"], 1):
        probe = row["probe"]
        values = (
            probe["cosine"]["mean"],
            probe.get("mean_absence", float("nan")),
            probe.get("mean_presence", float("nan")),
            probe["cosine"]["frac_above_0.95"],
        )
        cells = "".join(f'<td data-value="{v!r}">{v:.4f}</td>' for v in values)
        body.append(f"<tr><td>[{n}] {escape(short_label(row['model']))}</td>{cells}</tr>")
    return (
        f"<p>Negation probe: cosine between {first['n_pairs']} built-in captions and their negations "
        f"({escape(str(first.get('negator', 'file')))} negator; a model that ignores “no” gives ~1.0)</p>"
        '<table class="negclip-table" id="probe-table"><thead><tr><th>model</th><th>mean</th><th>absence</th>'
        f"<th>presence</th><th>&gt;0.95</th></tr></thead><tbody>{''.join(body)}</tbody></table>" + _legend(result)
    )


def equivalent_command(names, captions_text: str, corrections=(), image: str | None = "IMAGE") -> str:
    """The ``negclip compare`` command line that prints the same numbers."""
    import shlex

    texts = [c for caption in parse_captions(captions_text, at_least=0) for c in ("--text", caption)]
    image_flag = ["--image", image] if image else []
    fixes = [c for spec in corrections for c in ("--correction", spec)]
    return shlex.join(["negclip", "compare", *names, *image_flag, *texts, *fixes, "--json"])
