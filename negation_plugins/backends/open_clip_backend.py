"""Built-in backend: everything ``open_clip.create_model_and_transforms`` understands."""

from __future__ import annotations

from pathlib import Path

import open_clip

from ..factory import Backend, ClipBundle
from ..hookspecs import hookimpl


def _split_name_and_tag(spec: str) -> tuple[str, str | None]:
    if _is_open_clip_folder(spec):  # a plain folder (a trainer's --output) reads as local-dir:
        return f"local-dir:{Path(spec).expanduser()}", None
    if spec.startswith("local-dir:"):
        return spec, None
    name, _, tag = spec.partition(":")
    return name, tag or None


class OpenClipBackend(Backend):
    name = "open_clip"
    description = (
        "open_clip names with pretrained tags (ViT-B-32:openai), local-dir:/path or a folder with open_clip_config.json "
        "(hf-hub:ORG/REPO lands here)"
    )

    def can_load(self, spec: str) -> bool:
        if spec.startswith("local-dir:") or _is_open_clip_folder(spec):
            return True
        name, _ = _split_name_and_tag(spec)
        return name in open_clip.list_models()

    def load(self, spec: str, *, device="cpu", **options) -> ClipBundle:
        name, tag = _split_name_and_tag(spec)
        if name.startswith("local-dir:"):
            folder = Path(name[len("local-dir:") :])
            if not (folder / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"{folder}: not an open_clip folder (no open_clip_config.json)")
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=device, **options)
        tokenizer = open_clip.get_tokenizer(name)
        # The config lets save_open_clip write the model back out; force_* options change it, so then it is
        # read from the modules instead.
        info = {"backend": self.name, "model_cfg": None if options else open_clip.get_model_config(name)}
        return ClipBundle(model=model, tokenizer=tokenizer, preprocess=preprocess, spec=spec, info=info)


def _is_open_clip_folder(spec: str) -> bool:
    return (Path(spec).expanduser() / "open_clip_config.json").is_file()


@hookimpl
def register_backends(register):
    register(OpenClipBackend())
