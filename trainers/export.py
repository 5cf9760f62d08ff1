"""What a finished run leaves in ``--output``:

    open_clip_config.json, open_clip_model.safetensors   the fine-tuned CLIP (``local-dir:OUTPUT`` / ``hf-hub:``)
    transformers/                                        transformers ``CLIPModel`` (+ tokenizer, image processor)
    text_encoder/                                        transformers ``CLIPTextModel`` for diffusers pipelines
    adapter/                                             peft adapter (adapter_config.json, adapter_model.safetensors)
    pytorch_lora_weights.safetensors                     diffusers text-encoder LoRA (``pipe.load_lora_weights``)
    README.md                                            model card with the before/after results table
    results.json                                         the run's summary (settings, results before/after)

The last three adapter files only for ``--tuning lora``; the weights at the top level are then the merged model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
DIFFUSERS_PREFIX = "text_encoder.text_model.encoder.layers"
ADAPTER_DIR = "adapter"
RESULTS_FILE = "results.json"
_BLOCK = re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\.(attn|mlp\.c_fc|mlp\.c_proj)$")


def diffusers_lora_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights of an open_clip text tower, renamed to transformers ``CLIPTextModel`` modules with the
    ``text_encoder.`` prefix diffusers expects (peft layout: ``...q_proj.lora_A.weight`` / ``lora_B.weight``).

    open_clip's fused q/k/v LoRA (A: r x d, B: 3d x r) becomes three LoRAs sharing A, with B split in thirds —
    exactly the same weight update, since q/k/v are the thirds of ``in_proj``. The peft scale alpha/r is folded
    into B, because diffusers loads files without alphas at scale 1.
    """
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    for name, module in peft_model.named_modules():
        match = _BLOCK.search(name)
        if not match or not isinstance(module, LoraLayer) or "visual." in name:
            continue
        layer, part = match.group(1), match.group(2)
        prefix = f"{DIFFUSERS_PREFIX}.{layer}"
        if part == "attn":
            lora_a, lora_b = _lora_pair(module)
            width = lora_b.shape[0] // 3
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{prefix}.self_attn.{proj}.lora_A.weight"] = lora_a.clone()
                out[f"{prefix}.self_attn.{proj}.lora_B.weight"] = lora_b[i * width : (i + 1) * width].contiguous()
            out_a, out_b = _lora_pair(module.base_layer.out_proj)
            out[f"{prefix}.self_attn.out_proj.lora_A.weight"] = out_a
            out[f"{prefix}.self_attn.out_proj.lora_B.weight"] = out_b
        else:
            target = "fc1" if part == "mlp.c_fc" else "fc2"
            lora_a, lora_b = _lora_pair(module)
            out[f"{prefix}.mlp.{target}.lora_A.weight"] = lora_a
            out[f"{prefix}.mlp.{target}.lora_B.weight"] = lora_b
    return out


def _lora_pair(module) -> tuple[torch.Tensor, torch.Tensor]:
    adapter = module.active_adapters[0]
    lora_a = module.lora_A[adapter].weight.detach().float().cpu().contiguous()
    lora_b = (module.lora_B[adapter].weight.detach().float().cpu() * module.scaling[adapter]).contiguous()
    return lora_a, lora_b


def export_diffusers_lora(peft_model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the diffusers text-encoder LoRA file (atomically); fails if the model holds no text LoRA."""
    from safetensors.torch import save_file

    state = diffusers_lora_state_dict(peft_model)
    if not state:
        raise ValueError("the model has no LoRA layers on its text tower; nothing to export for diffusers")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def write_outputs(output: Path, *, model: nn.Module, bundle, config, summary: dict) -> None:
    """Adapters first (they need the unmerged peft model), then the merged full model, results and card."""
    import peft

    from negation_plugins.convert import save_open_clip, save_transformers
    from negation_plugins.factory import ClipBundle
    from negation_plugins.model_card import write_model_card

    output.mkdir(parents=True, exist_ok=True)
    if isinstance(model, peft.PeftModel):
        _replace_dir(output / ADAPTER_DIR, lambda tmp: model.save_pretrained(str(tmp)))
        export_diffusers_lora(model, output / DIFFUSERS_LORA_FILE)
        model = model.merge_and_unload()
    model.eval()
    trained = ClipBundle(model, bundle.tokenizer, bundle.preprocess, bundle.spec, bundle.info)

    with tempfile.TemporaryDirectory(dir=output, prefix=".open_clip-") as tmp:
        folder = save_open_clip(trained, Path(tmp) / "model")
        for file in folder.iterdir():
            os.replace(file, output / file.name)
    if config.export_transformers:
        save_transformers(trained, output / "transformers", kind="full", overwrite=True)
        save_transformers(trained, output / "text_encoder", kind="text", overwrite=True)

    _write_json(output / RESULTS_FILE, summary)
    write_model_card(
        output,
        base_model=config.model,
        results_before=summary["results_before"],
        results_after=summary["results_after"],
        objectives=config.objective,
        tuning=config.tuning,
        tags=["negation", "clip", config.tuning.split(":")[0]],
        training={"steps": summary["steps"], "batch size": config.batch_size, "learning rate": config.lr,
                  "seed": config.seed, "train examples": summary["train_examples"]},
    )


def _replace_dir(target: Path, write) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
