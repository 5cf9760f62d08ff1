"""Built-in backend "openai": OpenAI-CLIP-format state dicts, architecture read from the tensor shapes.

This is how NegationCLIP (``negationclip_ViT-B32.pth``: a full fp32 OpenAI state dict), CoN-CLIP and
Omni-NegCLIP (``{"model": state_dict, ...}``) publish their weights. open_clip's ``CLIP`` uses the same key
layout, so the weights load unchanged into an open_clip model built from the inferred config. The number of
attention heads and the MLP activation cannot be read from the weights; OpenAI always used 64-wide heads and
quick_gelu, so those are assumed unless ``text_heads`` / ``vision_heads`` / ``activation`` say otherwise. For a
tower of a size OpenAI never published the assumption is a guess: it is logged as a warning naming the file and
the options, and recorded in ``bundle.info["assumed"]``. Text-only state dicts (no ``visual.*`` keys) give a model
with ``visual=None``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..factory import Backend, ClipBundle
from ..hookspecs import hookimpl
from ..hub import CHECKPOINT_SUFFIXES

logger = logging.getLogger(__name__)

PREFIX = "openai:"
ACTIVATIONS = ("quick_gelu", "gelu")
# (width, layers) of the towers OpenAI published (ViT-B/32, B/16, L/14, L/14@336 and the ResNets' text towers):
# for these, 64-wide heads and quick_gelu are known facts rather than guesses.
PUBLISHED_TEXT = {(512, 12), (640, 12), (768, 12), (1024, 12)}
PUBLISHED_VIT = {(768, 12), (1024, 24)}
OPENAI_HEAD_WIDTH = 64
# Metadata entries of OpenAI's original (JIT) state dicts; not weights.
METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
TEXT_KEYS = (
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "transformer.resblocks.0.mlp.c_fc.weight",
)


class StateDictError(ValueError):
    """A state dict that does not fit the OpenAI CLIP layout; the message names the keys."""


def _count_layers(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0  # gaps show up later as missing keys, by name


def _heads(width: int, override: int | None, what: str, source: str) -> int:
    if override is not None:
        if width % override:
            raise StateDictError(f"{source}: {what} width {width} is not divisible by {override} heads")
        return override
    if width % OPENAI_HEAD_WIDTH:
        raise StateDictError(
            f"{source}: cannot infer {what} attention heads for width {width} (OpenAI CLIP used 64-wide heads); "
            f"pass {what}_heads=N"
        )
    return width // OPENAI_HEAD_WIDTH


def infer_openai_config(
    state: dict,
    source: str = "state dict",
    *,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    quick_gelu: bool = True,
) -> dict:
    """open_clip ``model_cfg`` for an OpenAI-layout state dict (ViT, ModifiedResNet or text-only)."""
    missing = [k for k in TEXT_KEYS if k not in state]
    if missing:
        sample = ", ".join(sorted(state)[:5])
        raise StateDictError(
            f"{source}: not an OpenAI-CLIP state dict: missing keys {', '.join(missing)} (found keys like {sample})"
        )
    vocab_size, width = state["token_embedding.weight"].shape
    text_cfg = {
        "context_length": state["positional_embedding"].shape[0],
        "vocab_size": vocab_size,
        "width": width,
        "heads": _heads(width, text_heads, "text", source),
        "layers": _count_layers(state, "transformer.resblocks."),
        "mlp_ratio": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
    }
    projection = state.get("text_projection")
    if projection is None:
        text_cfg["proj_type"] = "none"
    embed_dim = projection.shape[1] if projection is not None else width
    vision_cfg = None
    if "visual.conv1.weight" in state and "visual.proj" in state:  # ViT
        conv = state["visual.conv1.weight"]
        grid = (
            round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            if "visual.positional_embedding" in state
            else 0
        )
        if grid * grid + 1 != state.get("visual.positional_embedding", torch.empty(0)).shape[0]:
            raise StateDictError(f"{source}: visual.positional_embedding is missing or not a square grid + class token")
        vision_width = conv.shape[0]
        heads = _heads(vision_width, vision_heads, "vision", source)
        vision_cfg = {
            "layers": _count_layers(state, "visual.transformer.resblocks."),
            "width": vision_width,
            "head_width": vision_width // heads,
            "patch_size": conv.shape[-1],
            "image_size": conv.shape[-1] * grid,
            "mlp_ratio": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width,
        }
        visual_dim = state["visual.proj"].shape[1]
    elif "visual.layer1.0.conv1.weight" in state:  # ModifiedResNet (RN50 & co)
        layers = tuple(_count_layers(state, f"visual.layer{b}.") for b in (1, 2, 3, 4))
        pos = state["visual.attnpool.positional_embedding"].shape[0]
        output_width = round((pos - 1) ** 0.5)
        vision_width = state["visual.layer1.0.conv1.weight"].shape[0]
        heads = vision_heads or vision_width * 32 // OPENAI_HEAD_WIDTH
        vision_cfg = {
            "layers": layers,
            "width": vision_width,
            "head_width": vision_width * 32 // heads,
            "image_size": output_width * 32,
        }
        visual_dim = state["visual.attnpool.c_proj.weight"].shape[0]
    elif any(k.startswith("visual.") for k in state):
        raise StateDictError(f"{source}: unrecognised vision tower (neither an OpenAI ViT nor a ModifiedResNet)")
    if vision_cfg is not None and visual_dim != embed_dim:
        raise StateDictError(
            f"{source}: text projection gives {embed_dim}-d embeddings but the vision tower {visual_dim}-d"
        )
    return {"embed_dim": embed_dim, "quick_gelu": quick_gelu, "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def build_from_openai_state_dict(state: dict, source: str = "state dict", **options):
    """An fp32 open_clip ``CLIP`` holding ``state`` exactly; missing/unexpected/misshaped keys raise by name."""
    from ..convert import build_open_clip

    state = {k: v for k, v in state.items() if k not in METADATA_KEYS}
    model_cfg = infer_openai_config(state, source, **options)
    model = build_open_clip(model_cfg)
    expected = model.state_dict()
    optional = {"logit_scale"} if model_cfg["vision_cfg"] is None else set()
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = [
        f"{label}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in misshaped]),
        )
        if keys
    ]
    if problems:
        raise StateDictError(
            f"{source}: does not match the inferred architecture ({_describe(model_cfg)}): " + "; ".join(problems)
        )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    model.model_cfg = model_cfg
    return model.eval(), model_cfg


def _describe(cfg: dict) -> str:
    t, v = cfg["text_cfg"], cfg["vision_cfg"]
    text = f"text {t['layers']}x{t['width']} ({t['heads']} heads, context {t['context_length']})"
    if v is None:
        return text + ", no vision tower"
    if isinstance(v["layers"], tuple):
        return text + f", ResNet {v['layers']} width {v['width']} @ {v['image_size']}px"
    return text + f", ViT {v['layers']}x{v['width']} patch {v['patch_size']} @ {v['image_size']}px"


def _assumptions(cfg: dict, text_heads, vision_heads, activation) -> str:
    """What was guessed about a tower of a size OpenAI never published ("" when nothing was)."""
    t, v = cfg["text_cfg"], cfg["vision_cfg"]
    unpublished = []
    if text_heads is None and (t["width"], t["layers"]) not in PUBLISHED_TEXT:
        unpublished.append(f"text {t['layers']}x{t['width']} ({t['heads']} heads): --text-heads")
    if (
        vision_heads is None
        and v is not None
        and not isinstance(v["layers"], tuple)
        and (v["width"], v["layers"]) not in PUBLISHED_VIT
    ):
        unpublished.append(f"vision {v['layers']}x{v['width']} ({v['width'] // v['head_width']} heads): --vision-heads")
    if not unpublished:
        return ""
    guessed = "64-wide attention heads" + (" and quick_gelu" if activation is None else "")
    return (
        f"not an architecture OpenAI published, so {guessed} are assumed (weights cannot tell); if the checkpoint "
        f"differs, set {'; '.join(unpublished)}" + ("; --activation gelu" if activation is None else "")
    )


def _path_of(spec: str) -> Path:
    return Path(spec.removeprefix(PREFIX)).expanduser()


class OpenAIStateDictBackend(Backend):
    name = "openai"
    description = "OpenAI-CLIP state dicts (.pth/.pt/.bin/.safetensors, optional {'model': ...} wrapper): NegationCLIP, CoN-CLIP, Omni-NegCLIP"

    def can_load(self, spec: str) -> bool:
        if spec.startswith(PREFIX):
            return True
        path = _path_of(spec)
        return path.suffix in CHECKPOINT_SUFFIXES and path.is_file()

    def load(
        self,
        spec: str,
        *,
        device="cpu",
        text_heads=None,
        vision_heads=None,
        activation=None,
        quick_gelu=None,
        **options,
    ) -> ClipBundle:
        import open_clip
        from open_clip.model import set_model_preprocess_cfg

        from ..convert import preprocess_cfg_of
        from ..safe_load import load_state_dict

        if options:
            raise TypeError(f"backend 'openai' got unknown options: {', '.join(options)}")
        if activation is not None and activation not in ACTIVATIONS:
            raise StateDictError(f"activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if quick_gelu is not None and activation is None:
            activation = "quick_gelu" if quick_gelu else "gelu"
        path = _path_of(spec)
        state = load_state_dict(path)
        model, model_cfg = build_from_openai_state_dict(
            state,
            str(path),
            text_heads=text_heads,
            vision_heads=vision_heads,
            quick_gelu=activation != "gelu",
        )
        assumed = _assumptions(model_cfg, text_heads, vision_heads, activation)
        model = model.to(device)
        preprocess = None
        if model.visual is not None:
            set_model_preprocess_cfg(model, preprocess_cfg_of(model))
            cfg = preprocess_cfg_of(model)
            preprocess = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"])
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])
        info = {"backend": self.name, "path": str(path), "model_cfg": model_cfg, "architecture": _describe(model_cfg)}
        if assumed:
            info["assumed"] = assumed
            logger.warning("%s: %s", path, assumed)
        return ClipBundle(model=model, tokenizer=tokenizer, preprocess=preprocess, spec=spec, info=info)


@hookimpl
def register_backends(register):
    register(OpenAIStateDictBackend())
