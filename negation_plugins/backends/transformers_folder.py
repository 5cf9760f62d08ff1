"""Built-in backend "transformers": folders holding a transformers ``CLIPModel`` / ``CLIPTextModel(WithProjection)``.

The model is converted exactly to open_clip (see :mod:`negation_plugins.convert`); text-only folders (for
example a Stable Diffusion ``text_encoder/``) give a model with ``visual=None``. The tokenizer is open_clip's,
whose ids equal the transformers CLIP tokenizer's.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..factory import Backend, ClipBundle
from ..hookspecs import hookimpl
from ..textfiles import read_text

MODEL_TYPES = ("clip", "clip_text_model")
IGNORED_UNEXPECTED = ("position_ids",)  # buffers older transformers versions saved


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads(read_text(folder / "config.json")).get("model_type")
    except (OSError, ValueError):
        return None


def _model_class(config):
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    if config.model_type == "clip":
        return CLIPModel
    if config.model_type == "clip_text_model":
        with_projection = "CLIPTextModelWithProjection" in (getattr(config, "architectures", None) or [])
        return CLIPTextModelWithProjection if with_projection else CLIPTextModel
    raise ValueError(
        f"model_type {config.model_type!r} is not a CLIP text encoder; expected one of {', '.join(MODEL_TYPES)}"
    )


def load_transformers_clip(source: str):
    """A transformers CLIP model from a local folder, refusing partial loads by key name."""
    from transformers import AutoConfig

    folder = Path(source)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"{source}: has config.json but no weights file (model.safetensors or pytorch_model.bin)")
    try:
        config = AutoConfig.from_pretrained(source)
        cls = _model_class(config)
        model, info = cls.from_pretrained(source, output_loading_info=True)
    except OSError as error:  # unreadable config or weights; transformers' message names the file
        raise ValueError(f"{source}: cannot load a transformers CLIP: {' '.join(str(error).split())}") from None
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith(IGNORED_UNEXPECTED)]
    problems = {
        "missing keys": sorted(info.get("missing_keys", ())),
        "unexpected keys": sorted(unexpected),
        "shape mismatch": sorted(str(k) for k in info.get("mismatched_keys", ())),
    }
    problems = {label: keys for label, keys in problems.items() if keys}
    if problems:
        raise ValueError(
            f"{source}: weights do not match its config.json ({cls.__name__}): "
            + "; ".join(f"{label}: {', '.join(keys[:10])}" for label, keys in problems.items())
        )
    return model.eval()


class TransformersFolderBackend(Backend):
    name = "transformers"
    description = "transformers CLIPModel / CLIPTextModel / CLIPTextModelWithProjection folders (config.json); ORG/REPO[/SUBFOLDER] Hub names land here"

    def can_load(self, spec: str) -> bool:
        folder = Path(spec).expanduser()
        return folder.is_dir() and _model_type(folder) in MODEL_TYPES

    def load(self, spec: str, *, device="cpu", **options) -> ClipBundle:
        import open_clip
        from open_clip.model import set_model_preprocess_cfg

        from ..convert import preprocess_cfg_of, transformers_to_open_clip

        if options:
            raise TypeError(f"backend 'transformers' got unknown options: {', '.join(options)}")
        source = str(Path(spec).expanduser())
        hf_model = load_transformers_clip(source)
        model = transformers_to_open_clip(hf_model).to(device)
        preprocess = None
        if model.visual is not None:
            cfg = preprocess_cfg_of(model) | _image_processor_settings(source)
            set_model_preprocess_cfg(model, cfg)
            preprocess = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"])
        context_length = model.context_length
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        info = {
            "backend": self.name,
            "source": source,
            "source_class": type(hf_model).__name__,
            "model_cfg": model.model_cfg,
        }
        return ClipBundle(model=model, tokenizer=tokenizer, preprocess=preprocess, spec=spec, info=info)


def _image_processor_settings(source: str) -> dict:
    """Mean/std from a local ``preprocessor_config.json`` when present (OpenAI's values otherwise)."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(read_text(path))
    return {k: list(cfg[hf]) for k, hf in (("mean", "image_mean"), ("std", "image_std")) if hf in cfg}


@hookimpl
def register_backends(register):
    register(TransformersFolderBackend())
