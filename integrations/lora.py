"""Negation LoRA adapters in diffusers pipelines.

Two files carry a text-encoder LoRA:

* a **peft adapter** folder (``adapter_config.json`` + ``adapter_model.safetensors``), trained on the open_clip
  text tower (modules ``transformer.resblocks.N.attn`` / ``mlp.c_fc`` / ``mlp.c_proj``) or on a transformers
  ``CLIPTextModel`` (``self_attn.q_proj`` ... ``mlp.fc2``);
* the **diffusers** file ``pytorch_lora_weights.safetensors`` (keys ``text_encoder.<module>.lora_A.weight``),
  what ``pipe.load_lora_weights`` reads.

:func:`write_diffusers_lora` turns the first into the second *exactly*: open_clip's fused q/k/v LoRA
(``B @ A`` with ``B`` of shape (3W, r)) splits into three LoRAs sharing ``A`` (``B[:W]``, ``B[W:2W]``,
``B[2W:]``), the rest is renaming (peft's MultiheadAttention applies its out_proj LoRA twice; that is
measured and reproduced, see :func:`peft_mha_out_proj_factor`); rank and alpha travel in the file's metadata. Then the adapter is an
ordinary diffusers LoRA: ``set_adapters([...], adapter_weights=[...])``, ``fuse_lora()``, ``unfuse_lora()``,
``unload_lora_weights()`` all work. :func:`load_peft_adapter` does both steps for a pipeline::

    negation_plugins.apply(pipe, base_source)          # the encoder the adapter was trained on
    load_peft_adapter(pipe, "out/adapter", adapter_name="negation")
    pipe.set_adapters(["negation"], adapter_weights=[0.8])
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
from pathlib import Path

import torch

from negation_plugins.textfiles import read_text

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
_PEFT_PREFIX = "base_model.model."
# open_clip text-tower module -> transformers CLIPTextModel module (flat layout, transformers >= 5.6)
_OPEN_CLIP_MODULES = (
    (re.compile(r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc$"), r"encoder.layers.\1.mlp.fc1"),
    (re.compile(r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj$"), r"encoder.layers.\1.mlp.fc2"),
)
_MHA_OUT_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.base_layer\.out_proj$")
_FUSED_QKV = re.compile(r"^transformer\.resblocks\.(\d+)\.attn$")
_TRANSFORMERS_MODULE = re.compile(
    r"^(?:text_model\.)?(encoder\.layers\.\d+\.(?:self_attn\.[qkv]_proj|self_attn\.out_proj|mlp\.fc[12]))$"
)
_UNSUPPORTED_OPTIONS = ("use_dora", "use_rslora")


class AdapterError(ValueError):
    """A peft adapter folder that cannot become a diffusers text-encoder LoRA; the message names the file."""


def read_peft_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(adapter_config, {key: tensor})`` of a peft adapter folder, with clear errors for broken folders."""
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AdapterError(f"{folder}: not a peft adapter folder (no {path.name})")
    try:
        config = json.loads(read_text(config_path))
    except json.JSONDecodeError as error:
        raise AdapterError(f"{config_path}: invalid JSON ({error})") from error
    if config.get("peft_type") != "LORA":
        raise AdapterError(
            f"{config_path}: peft_type is {config.get('peft_type')!r}; only LORA adapters go into pipelines"
        )
    for option in _UNSUPPORTED_OPTIONS:
        if config.get(option):
            raise AdapterError(f"{config_path}: {option}=true adapters cannot be expressed as a diffusers LoRA file")
    if config.get("trainable_token_indices"):
        raise AdapterError(
            f"{config_path}: the adapter also trains token-embedding rows (trainable_token_indices), which a "
            "diffusers LoRA file cannot carry; use the merged text encoder the trainer writes (OUTPUT/text_encoder)"
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError(
            f"{config_path}: per-module rank_pattern/alpha_pattern are not supported; use one rank and alpha"
        )
    return config, load_file(str(weights_path))


def diffusers_lora_state_dict(adapter_dir: str | Path, module_prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """The adapter as a transformers text-model LoRA: ``({module.lora_A.weight: tensor}, lora_config)``.

    ``module_prefix`` is where the encoder layers live in the target module: ``""`` for the flat
    ``CLIPTextModel`` (transformers >= 5.6), ``"text_model."`` for ``CLIPTextModelWithProjection``.
    """
    config, weights = read_peft_adapter(adapter_dir)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = re.match(r"^(.*)\.(lora_[AB])\.weight$", key.removeprefix(_PEFT_PREFIX))
        if match is None:
            raise AdapterError(f"{adapter_dir}: adapter weight {key!r} is not a LoRA A/B matrix")
        modules.setdefault(match.group(1), {})[match.group(2)] = tensor
    state: dict[str, torch.Tensor] = {}
    for module, pair in sorted(modules.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterError(
                f"{adapter_dir}: module {module!r} has {sorted(pair)} but a LoRA needs lora_A and lora_B"
            )
        for target, lora_a, lora_b in _transformers_loras(module, pair["lora_A"], pair["lora_B"], adapter_dir):
            state[f"{module_prefix}{target}.lora_A.weight"] = lora_a.clone()  # q, k, v share A: separate copies
            state[f"{module_prefix}{target}.lora_B.weight"] = lora_b.contiguous()
    targets = sorted({key.rsplit(".", 2)[0].rsplit(".", 1)[-1] for key in state})
    lora_config = {
        "r": int(config["r"]),
        "lora_alpha": float(config["lora_alpha"]),
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": False,
    }
    return state, lora_config


def _transformers_loras(module: str, lora_a: torch.Tensor, lora_b: torch.Tensor, adapter_dir):
    fused = _FUSED_QKV.match(module)
    if fused:
        width = lora_b.shape[0] // 3
        layer = fused.group(1)
        return [
            (f"encoder.layers.{layer}.self_attn.{name}", lora_a, part)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), lora_b.split(width, dim=0))
        ]
    if _MHA_OUT_PROJ.match(module):
        # what the trained open_clip model computed, whatever peft's MultiheadAttention does with out_proj
        return [
            (
                _MHA_OUT_PROJ.sub(r"encoder.layers.\1.self_attn.out_proj", module),
                lora_a,
                lora_b * peft_mha_out_proj_factor(),
            )
        ]
    for pattern, replacement in _OPEN_CLIP_MODULES:
        if pattern.match(module):
            return [(pattern.sub(replacement, module), lora_a, lora_b)]
    match = _TRANSFORMERS_MODULE.match(module)
    if match:
        return [(match.group(1), lora_a, lora_b)]
    raise AdapterError(
        f"{adapter_dir}: LoRA on module {module!r} is outside the text transformer blocks "
        "(supported: open_clip transformer.resblocks.N.attn / mlp.c_fc / mlp.c_proj, "
        "transformers encoder.layers.N.self_attn.q/k/v/out_proj / mlp.fc1 / mlp.fc2)"
    )


@functools.lru_cache(maxsize=1)
def peft_mha_out_proj_factor() -> float:
    """How many times peft applies a MultiheadAttention's out_proj LoRA (measured on a tiny module, once).

    peft 0.21's ``lora.MultiheadAttention.merge`` adds the out_proj delta to the weight and then merges the
    wrapped out_proj LoRA again, so a trained model computes ``W + 2·BA·s`` there. Measuring instead of assuming
    keeps the conversion exact if peft changes this.
    """
    from peft import LoraConfig, get_peft_model

    generator = torch.Generator().manual_seed(0)
    holder = torch.nn.Module()
    holder.attn = torch.nn.MultiheadAttention(4, 1, bias=False)
    before = holder.attn.out_proj.weight.detach().clone()
    wrapped = get_peft_model(holder, LoraConfig(r=1, lora_alpha=1, target_modules=["attn"], init_lora_weights=False))
    layer = wrapped.base_model.model.attn
    out_lora = layer.base_layer.out_proj
    with torch.no_grad():
        out_lora.lora_A["default"].weight.copy_(torch.rand(1, 4, generator=generator) + 0.5)
        out_lora.lora_B["default"].weight.copy_(torch.rand(4, 1, generator=generator) + 0.5)
        delta = out_lora.get_delta_weight("default")
        layer.merge()
        applied = layer.base_layer.out_proj.get_base_layer().weight.detach() - before
        layer.unmerge()
    return round(float((applied / delta).mean()) * 4) / 4


def write_diffusers_lora(
    adapter_dir: str | Path, out_dir: str | Path, slot: str = "text_encoder", module_prefix: str | None = None
) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (keys ``<slot>.``, rank/alpha in metadata); atomic.

    ``module_prefix`` defaults to the layout diffusers pipelines use: SDXL's ``text_encoder_2`` is a
    ``CLIPTextModelWithProjection`` (``text_model.`` inside), ``text_encoder`` a flat ``CLIPTextModel``.
    """
    from diffusers import StableDiffusionXLPipeline

    if module_prefix is None:
        module_prefix = "text_model." if slot == "text_encoder_2" else ""
    state, lora_config = diffusers_lora_state_dict(adapter_dir, module_prefix)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lora-") as tmp:
        layers = {f"{slot}_lora_layers": state, f"{slot}_lora_adapter_metadata": lora_config}
        StableDiffusionXLPipeline.save_lora_weights(tmp, **layers)
        Path(tmp, WEIGHTS_NAME).replace(out_dir / WEIGHTS_NAME)
    return out_dir / WEIGHTS_NAME


def load_peft_adapter(pipe, adapter_dir: str | Path, *, adapter_name: str = "negation", slot: str = "text_encoder"):
    """Load a peft adapter (open_clip- or transformers-trained) into ``pipe.<slot>`` as a diffusers LoRA adapter.

    ``pipe.<slot>`` must already hold the encoder the adapter was trained on (``negation_plugins.apply(pipe,
    base)``). Returns ``pipe``; the adapter is active, named ``adapter_name``.
    """
    encoder = getattr(pipe, slot, None)
    if encoder is None:
        raise ValueError(f"{type(pipe).__name__} has no {slot} to load the adapter into")
    tmp = Path(tempfile.mkdtemp(prefix="negation-lora-"))
    try:
        prefix = "text_model." if hasattr(encoder, "text_model") else ""
        write_diffusers_lora(adapter_dir, tmp, slot=slot, module_prefix=prefix)
        _check_shapes(encoder, tmp / WEIGHTS_NAME, slot, adapter_dir)
        pipe.load_lora_weights(str(tmp), weight_name=WEIGHTS_NAME, adapter_name=adapter_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pipe


def _check_shapes(encoder, weights_path: Path, slot: str, adapter_dir) -> None:
    """Catch an adapter trained on another encoder size before peft fails with a bare shape error."""
    from safetensors.torch import load_file

    modules = dict(encoder.named_modules())
    for key, tensor in load_file(str(weights_path)).items():
        module_name, which = key.removeprefix(f"{slot}.").rsplit(".", 2)[0], key.rsplit(".", 2)[-2]
        module = modules.get(module_name)
        if module is None:
            raise AdapterError(f"{adapter_dir}: {slot} has no module {module_name!r} for LoRA weight {key!r}")
        expected = module.in_features if which == "lora_A" else module.out_features
        got = tensor.shape[1] if which == "lora_A" else tensor.shape[0]
        if expected != got:
            raise AdapterError(
                f"{adapter_dir}: LoRA for {module_name} was trained for width {got} but {slot} has {expected}; "
                "swap in the adapter's base encoder first (negation_plugins.apply(pipe, base))"
            )
