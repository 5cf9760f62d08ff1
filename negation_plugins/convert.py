"""Exact conversion between open_clip (OpenAI layout) and transformers CLIP models, both directions.

The two libraries compute the same function with different module layouts: open_clip fuses q/k/v into
one ``in_proj`` and applies projections as ``x @ P``; transformers keeps q/k/v apart and uses ``Linear``
(weight = Pᵀ). Architecture facts that the weights cannot tell (attention heads, activation, layer-norm eps,
pooling token) are read from the source modules, never assumed, and every conversion is checked by running
both models on the same inputs (``verify=True``), so a mismatch cannot pass silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_folder

KINDS = ("text", "text_with_projection", "full")
STANDARD_VOCAB_SIZE = 49408
OPENAI_EOS_ID = 49407
DEFAULT_LN_EPS = 1e-5


class ConversionError(ValueError):
    """The source cannot be expressed exactly in the target format."""


class ConversionMismatchError(ConversionError):
    """Converted and source models disagree on the same inputs."""


# ---------------------------------------------------------------------------------------------------------
# Reading an open_clip model's architecture


def _text_tower(model) -> tuple[nn.Module, str]:
    """The module holding the text transformer and its key prefix (``CLIP``: the model itself; ``CustomTextCLIP``: ``.text``)."""
    text = getattr(model, "text", None)
    if isinstance(text, nn.Module):
        if not hasattr(text, "token_embedding"):
            raise ConversionError(
                f"the text tower is a {type(text).__name__} (not open_clip's TextTransformer); "
                "only CLIP-style text transformers convert to transformers CLIP"
            )
        return text, "text."
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        return model, ""
    raise ConversionError(f"{type(model).__name__} is not an open_clip CLIP / CustomTextCLIP model")


def _activation_name(act: nn.Module, where: str) -> str:
    from open_clip.transformer import QuickGELU

    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}[act.approximate]
    raise ConversionError(f"{where}: activation {type(act).__name__} has no transformers CLIP equivalent")


def _layer_norm_eps(norms: list[nn.Module], where: str) -> float:
    for norm in norms:
        if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine or norm.bias is None:
            raise ConversionError(f"{where}: {type(norm).__name__} is not an affine LayerNorm")
    eps = {norm.eps for norm in norms}
    if len(eps) != 1:
        raise ConversionError(f"{where}: layer norms use different eps values {sorted(eps)}")
    return eps.pop()


def _blocks_spec(transformer: nn.Module, where: str) -> dict:
    """Heads, MLP width, activation and norm eps of a stack of open_clip ResidualAttentionBlocks."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = list(transformer.resblocks)
    if not blocks:
        raise ConversionError(f"{where}: no transformer layers")
    heads, mlp, acts = set(), set(), set()
    for i, block in enumerate(blocks):
        name = f"{where} layer {i}"
        if type(block) is not ResidualAttentionBlock:
            raise ConversionError(
                f"{name}: {type(block).__name__} (custom attention) has no transformers CLIP equivalent"
            )
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            raise ConversionError(f"{name}: layer scale has no transformers CLIP equivalent")
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.bias_k is not None:
            raise ConversionError(f"{name}: attention layout (separate q/k/v dims, no bias or bias_kv) is unsupported")
        heads.add(attn.num_heads)
        mlp.add(block.mlp.c_fc.out_features)
        acts.add(_activation_name(block.mlp.gelu, name))
    for label, values in (("attention heads", heads), ("MLP widths", mlp), ("activations", acts)):
        if len(values) != 1:
            raise ConversionError(f"{where}: layers differ in {label}: {sorted(values)}")
    norms = [n for b in blocks for n in (b.ln_1, b.ln_2)]
    return {
        "width": transformer.width,
        "layers": len(blocks),
        "heads": heads.pop(),
        "intermediate_size": mlp.pop(),
        "hidden_act": acts.pop(),
        "norms": norms,
    }


def open_clip_text_spec(model) -> dict:
    """The text architecture of an open_clip model, or a :class:`ConversionError` naming what cannot convert."""
    tower, prefix = _text_tower(model)
    where = "text tower"
    spec = _blocks_spec(tower.transformer, where)
    if getattr(tower, "cls_emb", None) is not None:
        raise ConversionError(f"{where}: a CLS embedding (CoCa-style) has no transformers CLIP equivalent")
    if getattr(tower, "attn_mask", None) is None:
        raise ConversionError(f"{where}: no causal mask (bidirectional text encoder); transformers CLIP is causal")
    if getattr(tower, "final_ln_after_pool", False):
        raise ConversionError(f"{where}: final LayerNorm after pooling is not how transformers CLIP works")
    pool = tower.pool_type if prefix else model.text_pool_type
    eos = tower.eos_id if prefix else getattr(model, "text_eos_id", None)
    vocab_size = tower.token_embedding.weight.shape[0]
    if pool == "argmax":
        # argmax picks the first highest id; with the CLIP vocabulary that is always the end-of-text token
        # 49407, which transformers finds by id. Otherwise use transformers' legacy id 2 = argmax pooling.
        eos_token_id = OPENAI_EOS_ID if vocab_size == STANDARD_VOCAB_SIZE else 2
    elif pool == "eos" and eos != 2:
        eos_token_id = eos
    else:
        raise ConversionError(f"{where}: pooling {pool!r} (eos id {eos}) has no transformers CLIP equivalent")
    projection = tower.text_projection
    if projection is not None and not isinstance(projection, nn.Parameter):
        raise ConversionError(f"{where}: a {type(projection).__name__} text projection (with bias) is unsupported")
    spec.update(
        prefix=prefix,
        vocab_size=vocab_size,
        context_length=tower.positional_embedding.shape[0],
        eos_token_id=eos_token_id,
        projection_dim=None if projection is None else projection.shape[1],
        layer_norm_eps=_layer_norm_eps(spec.pop("norms") + [tower.ln_final], where),
    )
    return spec


def open_clip_vision_spec(model) -> dict:
    """The vision architecture of an open_clip model (ViT only), or a :class:`ConversionError`."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    where = "vision tower"
    if visual is None:
        raise ConversionError(
            "the model has no vision tower (text-only); convert with kind='text' or 'text_with_projection'"
        )
    if not isinstance(visual, VisionTransformer):
        raise ConversionError(f"{where}: {type(visual).__name__} is not a ViT; transformers CLIPModel needs a ViT")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ConversionError(
            f"{where}: pooling {visual.pool_type!r} / attention pooling is unsupported (needs class token)"
        )
    if visual.final_ln_after_pool or isinstance(visual.ln_pre, nn.Identity) or visual.proj is None:
        raise ConversionError(f"{where}: needs ln_pre, ln_post before pooling and a projection like OpenAI CLIP")
    if visual.conv1.bias is not None:
        raise ConversionError(f"{where}: patch embedding with bias is unsupported")
    (height, width_px), (patch_h, patch_w) = visual.image_size, visual.patch_size
    if height != width_px or patch_h != patch_w:
        raise ConversionError(
            f"{where}: non-square images/patches {visual.image_size}/{visual.patch_size} are unsupported"
        )
    spec = _blocks_spec(visual.transformer, where)
    spec.update(
        image_size=height,
        patch_size=patch_h,
        projection_dim=visual.proj.shape[1],
        layer_norm_eps=_layer_norm_eps(spec.pop("norms") + [visual.ln_pre, visual.ln_post], where),
    )
    return spec


# ---------------------------------------------------------------------------------------------------------
# Key mapping (open_clip key, transformers keys, how)

COPY, TRANSPOSE, SPLIT_QKV = "copy", "transpose", "split_qkv"


def _block_pairs(oc: str, hf: str):
    yield oc + "attn.in_proj_weight", tuple(f"{hf}self_attn.{p}_proj.weight" for p in "qkv"), SPLIT_QKV
    yield oc + "attn.in_proj_bias", tuple(f"{hf}self_attn.{p}_proj.bias" for p in "qkv"), SPLIT_QKV
    for oc_name, hf_name in (
        ("attn.out_proj", "self_attn.out_proj"),
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        ("mlp.c_fc", "mlp.fc1"),
        ("mlp.c_proj", "mlp.fc2"),
    ):
        for p in ("weight", "bias"):
            yield f"{oc}{oc_name}.{p}", (f"{hf}{hf_name}.{p}",), COPY


def key_pairs(kind: str, text_layers: int, vision_layers: int = 0, oc_text: str = ""):
    """Every (open_clip key, transformers keys, operation) for one conversion kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown conversion kind {kind!r}; kinds are: {', '.join(KINDS)}")
    hf = "" if kind == "text" else "text_model."
    pairs = [
        (oc_text + "token_embedding.weight", (hf + "embeddings.token_embedding.weight",), COPY),
        (oc_text + "positional_embedding", (hf + "embeddings.position_embedding.weight",), COPY),
        (oc_text + "ln_final.weight", (hf + "final_layer_norm.weight",), COPY),
        (oc_text + "ln_final.bias", (hf + "final_layer_norm.bias",), COPY),
    ]
    for i in range(text_layers):
        pairs += _block_pairs(f"{oc_text}transformer.resblocks.{i}.", f"{hf}encoder.layers.{i}.")
    if kind != "text":
        pairs.append((oc_text + "text_projection", ("text_projection.weight",), TRANSPOSE))
    if kind == "full":
        pairs += [
            ("visual.conv1.weight", ("vision_model.embeddings.patch_embedding.weight",), COPY),
            ("visual.class_embedding", ("vision_model.embeddings.class_embedding",), COPY),
            ("visual.positional_embedding", ("vision_model.embeddings.position_embedding.weight",), COPY),
            ("visual.ln_pre.weight", ("vision_model.pre_layrnorm.weight",), COPY),
            ("visual.ln_pre.bias", ("vision_model.pre_layrnorm.bias",), COPY),
            ("visual.ln_post.weight", ("vision_model.post_layernorm.weight",), COPY),
            ("visual.ln_post.bias", ("vision_model.post_layernorm.bias",), COPY),
            ("visual.proj", ("visual_projection.weight",), TRANSPOSE),
            ("logit_scale", ("logit_scale",), COPY),
        ]
        for i in range(vision_layers):
            pairs += _block_pairs(f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.")
    return pairs


def _check_keys(have: set, want: set, what: str) -> None:
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        raise ConversionError(
            f"{what}: "
            + "; ".join(
                f"{label} keys: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        )


# ---------------------------------------------------------------------------------------------------------
# open_clip -> transformers


# transformers CLIP config fields of both towers: named as in the tower specs, or renamed (field: spec key)
_TOWER_FIELDS = ("intermediate_size", "hidden_act", "layer_norm_eps")
_TOWER_RENAMED = {"hidden_size": "width", "num_hidden_layers": "layers", "num_attention_heads": "heads"}


def _config_fields(spec: dict, *fields: str, **renamed: str) -> dict:
    """transformers config fields from a tower spec (:func:`open_clip_text_spec`, :func:`open_clip_vision_spec`):
    those of every tower, plus ``fields`` named alike and ``renamed`` ones (field=spec key)."""
    keys = {**{name: name for name in _TOWER_FIELDS + fields}, **_TOWER_RENAMED, **renamed}
    return {field: spec[key] for field, key in keys.items()}


def transformers_configs(model, kind: str):
    """The transformers config describing ``model`` (an open_clip model) for one conversion kind."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    if kind not in KINDS:
        raise ValueError(f"unknown conversion kind {kind!r}; kinds are: {', '.join(KINDS)}")
    text = open_clip_text_spec(model)
    text_cfg = {
        **_config_fields(text, "vocab_size", "eos_token_id", max_position_embeddings="context_length"),
        "projection_dim": text["projection_dim"] or text["width"],
    }
    if kind == "text":
        return CLIPTextConfig(**text_cfg, architectures=["CLIPTextModel"])
    if text["projection_dim"] is None:
        raise ConversionError(f"kind {kind!r} needs a text projection, but the model has none; use kind='text'")
    if kind == "text_with_projection":
        return CLIPTextConfig(**text_cfg, architectures=["CLIPTextModelWithProjection"])
    vision = open_clip_vision_spec(model)
    if vision["projection_dim"] != text["projection_dim"]:
        raise ConversionError(
            f"text and vision projections differ ({text['projection_dim']} vs {vision['projection_dim']})"
        )
    if getattr(model, "logit_bias", None) is not None:
        raise ConversionError("the model has a logit bias (SigLIP-style); transformers CLIPModel has none")
    vision_cfg = CLIPVisionConfig(**_config_fields(vision, "image_size", "patch_size", "projection_dim"))
    return CLIPConfig(
        text_config=CLIPTextConfig(**text_cfg).to_dict(),
        vision_config=vision_cfg.to_dict(),
        projection_dim=text["projection_dim"],
        logit_scale_init_value=float(model.logit_scale.detach().reshape(-1)[0]),
        architectures=["CLIPModel"],
    )


def open_clip_to_transformers(model, kind: str = "full", verify: bool = True):
    """A transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` / ``CLIPModel`` computing what ``model`` does.

    ``kind`` is "text", "text_with_projection" or "full". With ``verify`` both models run on the same
    tokens (and an image for "full") and any disagreement raises :class:`ConversionMismatchError`.
    """
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection
    from transformers.initialization import no_init_weights

    config = transformers_configs(model, kind)
    cls = {"text": CLIPTextModel, "text_with_projection": CLIPTextModelWithProjection, "full": CLIPModel}[kind]
    tower, oc_text = _text_tower(model)
    if kind == "full":
        pairs = key_pairs(kind, config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers, oc_text)
    else:
        pairs = key_pairs(kind, config.num_hidden_layers, oc_text=oc_text)
    source = model.state_dict()
    target: dict[str, torch.Tensor] = {}
    for oc_key, hf_keys, how in pairs:
        tensor = source[oc_key]
        if how == SPLIT_QKV:
            target.update(zip(hf_keys, tensor.chunk(3, dim=0)))
        elif how == TRANSPOSE:
            target[hf_keys[0]] = tensor.t()
        else:
            target[hf_keys[0]] = tensor
    used = {p[0] for p in pairs}
    if kind == "full":
        relevant = set(source)
    elif oc_text:
        relevant = {k for k in source if k.startswith(oc_text)}
    else:
        relevant = {k for k in source if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
    if kind == "text":
        relevant.discard(oc_text + "text_projection")  # a bare CLIPTextModel has no projection by design
    leftover = sorted(relevant - used)
    if leftover:
        raise ConversionError(f"open_clip weights with no transformers place: {', '.join(leftover[:8])}")
    reference = tower.token_embedding.weight
    with no_init_weights():  # every parameter is overwritten below (strict load), so skip the random init
        hf_model = cls(config)
    hf_state = hf_model.state_dict()
    _check_keys(set(target), set(hf_state), f"mapping to {cls.__name__}")
    for key, tensor in target.items():
        target[key] = tensor.reshape(hf_state[key].shape)
    hf_model.load_state_dict(target, strict=True)
    hf_model = hf_model.to(device=reference.device, dtype=reference.dtype).eval()
    if verify:
        assert_same_outputs(model, hf_model)
    return hf_model


# ---------------------------------------------------------------------------------------------------------
# transformers -> open_clip


def _hf_parts(hf_model):
    """(kind, text config, vision config or None) of a transformers CLIP model."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    if isinstance(hf_model, CLIPModel):
        return "full", hf_model.config.text_config, hf_model.config.vision_config
    if isinstance(hf_model, CLIPTextModelWithProjection):
        return "text_with_projection", hf_model.config, None
    if isinstance(hf_model, CLIPTextModel):
        return "text", hf_model.config, None
    raise ConversionError(
        f"{type(hf_model).__name__} is not a transformers CLIPModel, CLIPTextModel or CLIPTextModelWithProjection"
    )


def _open_clip_tower_cfg(cfg, where: str) -> tuple[dict, str]:
    width, heads = cfg.hidden_size, cfg.num_attention_heads
    if width % heads:
        raise ConversionError(f"{where}: hidden size {width} is not a multiple of {heads} attention heads")
    mlp_ratio = cfg.intermediate_size / width
    if int(width * mlp_ratio) != cfg.intermediate_size:
        raise ConversionError(f"{where}: intermediate size {cfg.intermediate_size} is not expressible as an MLP ratio")
    tower = {"width": width, "layers": cfg.num_hidden_layers, "mlp_ratio": mlp_ratio}
    if cfg.layer_norm_eps != DEFAULT_LN_EPS:
        tower["norm_kwargs"] = {"eps": cfg.layer_norm_eps}
    act = cfg.hidden_act
    if act == "gelu_pytorch_tanh":
        tower["act_kwargs"] = {"approximate": "tanh"}
    elif act not in ("gelu", "quick_gelu"):
        raise ConversionError(
            f"{where}: activation {act!r} has no open_clip equivalent (quick_gelu, gelu, gelu_pytorch_tanh)"
        )
    return tower, act


def open_clip_config(hf_model) -> dict:
    """The open_clip ``model_cfg`` (as in ``open_clip_config.json``) for a transformers CLIP model.

    For text-only sources ``vision_cfg`` is ``None``: open_clip cannot build such a model from a config.
    """
    kind, text_cfg, vision_cfg = _hf_parts(hf_model)
    text, text_act = _open_clip_tower_cfg(text_cfg, "text config")
    text.update(
        context_length=text_cfg.max_position_embeddings,
        vocab_size=text_cfg.vocab_size,
        heads=text_cfg.num_attention_heads,
    )
    eos = text_cfg.eos_token_id
    if eos == 2 or (eos == OPENAI_EOS_ID and text_cfg.vocab_size == STANDARD_VOCAB_SIZE):
        text["pool_type"] = "argmax"  # legacy id 2 means argmax; 49407 is the highest CLIP id, so argmax finds it
    elif isinstance(eos, int):
        text.update(pool_type="eos", eos_id=eos)
    else:
        raise ConversionError(f"text config: eos_token_id {eos!r} must be one integer")
    acts = {text_act}
    if kind == "text":
        text["proj_type"] = "none"
        embed_dim = text_cfg.hidden_size
    else:
        embed_dim = text_cfg.projection_dim if kind == "text_with_projection" else hf_model.config.projection_dim
    vision = None
    if vision_cfg is not None:
        vision, vision_act = _open_clip_tower_cfg(vision_cfg, "vision config")
        vision.update(
            image_size=vision_cfg.image_size,
            patch_size=vision_cfg.patch_size,
            head_width=vision_cfg.hidden_size // vision_cfg.num_attention_heads,
        )
        acts.add(vision_act)
    if "quick_gelu" in acts and len(acts) > 1:
        raise ConversionError(f"text and vision towers use different activations {sorted(acts)}; open_clip shares one")
    return {"embed_dim": embed_dim, "quick_gelu": "quick_gelu" in acts, "vision_cfg": vision, "text_cfg": text}


def build_open_clip(model_cfg: dict):
    """An open_clip ``CLIP`` from a model config; ``vision_cfg=None`` gives a text-only model (``visual`` is None)."""
    from open_clip.model import CLIP

    vision_cfg = model_cfg["vision_cfg"]
    text_only = vision_cfg is None
    if text_only:  # open_clip always builds a vision tower: build the smallest one, then drop it
        vision_cfg = {"layers": 1, "width": 8, "head_width": 8, "patch_size": 8, "image_size": 8}
    model = CLIP(
        model_cfg["embed_dim"],
        vision_cfg=vision_cfg,
        text_cfg=model_cfg["text_cfg"],
        quick_gelu=model_cfg["quick_gelu"],
    )
    if text_only:
        model.visual = None
    return model


def transformers_to_open_clip(hf_model, verify: bool = True):
    """An open_clip ``CLIP`` computing what a transformers CLIP model does (``visual`` is None for text-only)."""
    kind, text_cfg, vision_cfg = _hf_parts(hf_model)
    model_cfg = open_clip_config(hf_model)
    model = build_open_clip(model_cfg)
    model.model_cfg = model_cfg
    pairs = key_pairs(kind, text_cfg.num_hidden_layers, vision_cfg.num_hidden_layers if vision_cfg else 0)
    source = hf_model.state_dict()
    _check_keys(set(source), {k for p in pairs for k in p[1]}, f"{type(hf_model).__name__} weights")
    target = {}
    for oc_key, hf_keys, how in pairs:
        if how == SPLIT_QKV:
            target[oc_key] = torch.cat([source[k] for k in hf_keys], dim=0)
        elif how == TRANSPOSE:
            target[oc_key] = source[hf_keys[0]].t()
        else:
            target[oc_key] = source[hf_keys[0]]
    oc_state = model.state_dict()
    expected = set(oc_state) - ({"logit_scale"} if kind != "full" else set())
    _check_keys(set(target), expected, "mapping to open_clip")
    for key, tensor in target.items():
        target[key] = tensor.reshape(oc_state[key].shape)
    model.load_state_dict(target, strict=kind == "full")
    reference = source[pairs[0][1][0]]
    model = model.to(device=reference.device, dtype=reference.dtype).eval()
    if verify:
        assert_same_outputs(model, hf_model)
    return model


# ---------------------------------------------------------------------------------------------------------
# Checking equivalence


def open_clip_text_outputs(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token hidden states (after ln_final), pooled and projected text features of an open_clip model."""
    from open_clip.transformer import text_global_pool

    tower, prefix = _text_tower(model)
    pool = tower.pool_type if prefix else model.text_pool_type
    eos = tower.eos_id if prefix else getattr(model, "text_eos_id", None)
    x = tower.token_embedding(tokens) + tower.positional_embedding[: tokens.shape[1]]
    x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[: tokens.shape[1], : tokens.shape[1]]))
    pooled = text_global_pool(x, tokens, pool, eos_token_id=eos)
    projected = pooled @ tower.text_projection if tower.text_projection is not None else None
    return {"last_hidden_state": x, "pooled": pooled, "projected": projected}


def _probe_tokens(vocab_size: int, context_length: int, eos_id: int, generator: torch.Generator) -> torch.Tensor:
    """Start token, random ids, end token at short/medium/full lengths, zero padding (like open_clip)."""
    ends = sorted({min(4, context_length - 1), context_length // 2, context_length - 1})
    tokens = torch.zeros(len(ends), context_length, dtype=torch.long)
    for row, end in enumerate(ends):
        tokens[row, :end] = torch.randint(1, min(eos_id, vocab_size - 1), (end,), generator=generator)
        tokens[row, 0] = min(49406, eos_id - 1)
        tokens[row, end] = eos_id
    return tokens


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@torch.no_grad()
def assert_same_outputs(open_clip_model, hf_model, atol: float = 1e-4, seed: int = 0) -> dict[str, float]:
    """Run both models on the same probe inputs; raise :class:`ConversionMismatchError` if they disagree.

    Returns the max abs difference per output. Probe tokens are random ids with the end token at several
    positions; "full" models also get a random image.
    """
    from transformers import CLIPModel, CLIPTextModel

    kind, text_cfg, vision_cfg = _hf_parts(hf_model)
    was_training = open_clip_model.training
    open_clip_model.eval()
    hf_model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        eos = text_cfg.eos_token_id if text_cfg.eos_token_id != 2 else text_cfg.vocab_size - 1
        device = next(hf_model.parameters()).device
        tokens = _probe_tokens(text_cfg.vocab_size, text_cfg.max_position_embeddings, eos, generator).to(device)
        ours = open_clip_text_outputs(open_clip_model, tokens)
        text_model = hf_model if isinstance(hf_model, CLIPTextModel) else hf_model.text_model
        theirs = text_model(input_ids=tokens)
        diffs = {
            "last_hidden_state": _max_diff(ours["last_hidden_state"], theirs.last_hidden_state),
            "pooled": _max_diff(ours["pooled"], theirs.pooler_output),
        }
        if kind != "text":
            if ours["projected"] is None:
                raise ConversionMismatchError(
                    "the open_clip model has no text projection but the transformers model has one"
                )
            diffs["projected"] = _max_diff(ours["projected"], hf_model.text_projection(theirs.pooler_output))
        if kind == "full" and isinstance(hf_model, CLIPModel):
            size = vision_cfg.image_size
            image = torch.randn(2, 3, size, size, generator=generator).to(device=device, dtype=text_model.dtype)
            diffs["image_features"] = _max_diff(
                open_clip_model.encode_image(image), hf_model.get_image_features(pixel_values=image).pooler_output
            )
            diffs["logit_scale"] = _max_diff(open_clip_model.logit_scale.reshape(()), hf_model.logit_scale)
    finally:
        open_clip_model.train(was_training)
    bad = {name: d for name, d in diffs.items() if not d <= atol}
    if bad:
        raise ConversionMismatchError(
            "converted model disagrees with its source: "
            + ", ".join(f"{name} max abs diff {d:.3g}" for name, d in bad.items())
            + f" (tolerance {atol}); the architectures differ (attention heads, activation, eps or pooling)"
        )
    return diffs


# ---------------------------------------------------------------------------------------------------------
# Saving bundles


def model_config_of(bundle) -> dict:
    """The open_clip ``model_cfg`` of a bundle: recorded at load time, else read from the modules."""
    cfg = bundle.info.get("model_cfg") or getattr(bundle.model, "model_cfg", None)
    if cfg is not None:
        return cfg
    model = bundle.model
    text = open_clip_text_spec(model)
    vision = open_clip_vision_spec(model)
    if text["hidden_act"] != vision["hidden_act"] or text["hidden_act"] == "gelu_pytorch_tanh":
        raise ConversionError("cannot describe this model as an open_clip config (mixed/tanh activations)")

    def tower(spec):
        out = {"width": spec["width"], "layers": spec["layers"], "mlp_ratio": spec["intermediate_size"] / spec["width"]}
        if spec["layer_norm_eps"] != DEFAULT_LN_EPS:
            out["norm_kwargs"] = {"eps": spec["layer_norm_eps"]}
        return out

    text_cfg = tower(text) | {
        "heads": text["heads"],
        "context_length": text["context_length"],
        "vocab_size": text["vocab_size"],
    }
    text_cfg["pool_type"] = "argmax" if text["eos_token_id"] in (2, OPENAI_EOS_ID) else "eos"
    if text_cfg["pool_type"] == "eos":
        text_cfg["eos_id"] = text["eos_token_id"]
    vision_cfg = tower(vision) | {
        "head_width": vision["width"] // vision["heads"],
        "image_size": vision["image_size"],
        "patch_size": vision["patch_size"],
    }
    return {
        "embed_dim": text["projection_dim"],
        "quick_gelu": text["hidden_act"] == "quick_gelu",
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


def preprocess_cfg_of(model) -> dict:
    """open_clip's image preprocessing settings of a model, with OpenAI's defaults filled in."""
    from dataclasses import asdict

    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg

    cfg = asdict(PreprocessCfg()) | get_model_preprocess_cfg(model)
    size = cfg["size"]
    cfg["size"] = size[0] if isinstance(size, (tuple, list)) and size[0] == size[1] else size
    cfg["mean"], cfg["std"] = list(cfg["mean"]), list(cfg["std"])
    return cfg


def save_open_clip(bundle, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write an open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``), loadable with
    ``local-dir:OUT`` / ``hf-hub:``."""
    from safetensors.torch import save_file

    if not bundle.has_vision:
        raise ConversionError(
            f"{bundle.spec!r} is text-only: open_clip folders need a vision tower; save it with --to transformers"
        )
    model_cfg = model_config_of(bundle)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg_of(bundle.model)}
    state = {k: v.detach().contiguous().cpu() for k, v in bundle.model.state_dict().items()}

    def write(tmp: Path):
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2))
        save_file(state, str(tmp / "open_clip_model.safetensors"))

    return atomic_folder(out_dir, write, overwrite=overwrite)


def save_transformers(bundle, out_dir: str | Path, kind: str = "full", overwrite: bool = False) -> Path:
    """Write a transformers folder (model + tokenizer, + image processor for "full") that
    ``CLIPModel/CLIPTextModel(WithProjection).from_pretrained`` and ``CLIPTokenizer.from_pretrained`` load offline."""
    from .tokenizer import clip_tokenizer

    hf_model = open_clip_to_transformers(bundle.model, kind)
    context_length = (
        hf_model.config.max_position_embeddings
        if kind != "full"
        else hf_model.config.text_config.max_position_embeddings
    )
    tokenizer = clip_tokenizer(context_length)
    image_processor = _image_processor(bundle) if kind == "full" else None

    def write(tmp: Path):
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if image_processor is not None:
            image_processor.save_pretrained(tmp)

    return atomic_folder(out_dir, write, overwrite=overwrite)


def _image_processor(bundle):
    """A ``CLIPImageProcessor`` matching the bundle's open_clip preprocessing (resize shortest side, center crop)."""
    from transformers import CLIPImageProcessor

    cfg = preprocess_cfg_of(bundle.model)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    resample = {"bicubic": 3, "bilinear": 2}.get(cfg.get("interpolation", "bicubic"), 3)
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
        resample=resample,
    )
