"""What a finished run leaves in ``--output``:

    open_clip_config.json, open_clip_model.safetensors   the fine-tuned CLIP (``local-dir:OUTPUT`` / ``hf-hub:``)
    transformers/                                        transformers ``CLIPModel`` (+ tokenizer, image processor)
    text_encoder/                                        transformers ``CLIPTextModel`` for diffusers pipelines
    adapter/                                             peft adapter (adapter_config.json, adapter_model.safetensors)
    pytorch_lora_weights.safetensors                     diffusers text-encoder LoRA (``pipe.load_lora_weights``)
    README.md                                            model card with the before/after results table
    results.json                                         the run's summary (settings, results before/after)

The last three adapter files only for ``--tuning lora``; the weights at the top level are then the merged model.
An adapter that also trains token-embedding rows (``--lora-trainable-tokens``) gets no diffusers LoRA file: that
format carries layer LoRAs only; pipelines take the merged ``text_encoder/`` instead (logged when skipped).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from torch import nn

from negation_plugins.atomic import atomic_folder, atomic_write_json

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_DIR = "adapter"
RESULTS_FILE = "results.json"

logger = logging.getLogger(__name__)


def export_diffusers_lora(adapter_dir: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``output/pytorch_lora_weights.safetensors`` from a saved peft adapter folder: the diffusers
    text-encoder LoRA (``text_encoder.`` + transformers ``CLIPTextModel`` module names) that
    ``pipe.load_lora_weights`` reads. The exact open_clip -> transformers LoRA mapping (fused q/k/v split, peft's
    out_proj quirk) lives in :mod:`integrations.lora`, shared with the pipeline side."""
    from integrations.lora import write_diffusers_lora

    return write_diffusers_lora(adapter_dir, output, slot="text_encoder")


def write_outputs(output: Path, *, model: nn.Module, bundle, config, summary: dict) -> None:
    """Adapters first (they need the unmerged peft model), then the merged full model, results and card."""
    import peft

    from integrations.lora import AdapterError
    from negation_plugins.convert import save_open_clip, save_transformers
    from negation_plugins.factory import ClipBundle
    from negation_plugins.model_card import write_model_card

    output.mkdir(parents=True, exist_ok=True)
    if isinstance(model, peft.PeftModel):
        atomic_folder(output / ADAPTER_DIR, lambda tmp: model.save_pretrained(str(tmp)))
        try:
            export_diffusers_lora(output / ADAPTER_DIR, output)
        except AdapterError as error:
            logger.warning("%s not written: %s", DIFFUSERS_LORA_FILE, error)
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

    atomic_write_json(output / RESULTS_FILE, summary)
    write_model_card(
        output,
        base_model=config.model,
        results_before=summary["results_before"],
        results_after=summary["results_after"],
        objectives=config.objective,
        tuning=config.tuning,
        tags=["negation", "clip", config.tuning.split(":")[0]],
        training={
            "steps": summary["steps"],
            "batch size": config.batch_size,
            "learning rate": config.lr,
            "seed": config.seed,
            "train examples": summary["train_examples"],
        },
    )
