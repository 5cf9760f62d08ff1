"""``negclip app --export-space DIR``: the page as a Hugging Face Space (Gradio SDK), ready for
``negclip push DIR ORG/NAME --repo-type space``.

A Space runs ``app.py`` on a fresh machine, so a model that exists only on this one (a ``local-dir:`` folder, a
checkpoint file, a transformers folder) is copied into ``DIR/models/`` and named relative to ``app.py``; Hub and
open_clip names are kept as they are and fetched by the Space.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import __version__
from ..atomic import atomic_folder, check_replaceable
from ..hub import NEVER_PUSHED, parse_hub_name
from .core import AppError, check_corrections, check_model_name

APP_TEMPLATE = '''"""A Hugging Face Space made by `negclip app --export-space`: does the text encoder get "no"?"""

from pathlib import Path

from negation_plugins.app.page import build_app, serve

HERE = Path(__file__).resolve().parent
MODELS = {models}
PIPELINE = {pipeline}
CORRECTIONS = {corrections}


def here(name):
    """Names with ./ (also after local-dir: or steering:) are files next to this app.py."""
    for prefix in ("local-dir:", "steering:", ""):
        if name.startswith(prefix + "./"):
            return prefix + str(HERE / name[len(prefix) + 2 :])
    return name


page = build_app(
    [here(name) for name in MODELS],
    PIPELINE,
    [here(spec) for spec in CORRECTIONS],
    device="cuda" if __import__("torch").cuda.is_available() else "cpu",
)

if __name__ == "__main__":
    serve(page, host=None)  # Spaces set GRADIO_SERVER_NAME; elsewhere Gradio binds 127.0.0.1
'''

README_TEMPLATE = """---
title: {title}
emoji: 🚫
colorFrom: indigo
colorTo: gray
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
tags:
- negation
- clip
- negation-plugins
---

# {title}

Does the text encoder get "no"? Upload an image, type captions with and without "no", and compare
{what} side by side: each model's probabilities over your captions and the cosines behind them (the numbers of
`negclip compare --json`).{generate}

Models:

{model_list}

Made with negation-plugins: `negclip app --export-space`.
"""


def _copy_model(spec: str, models_dir: Path, index: int) -> str:
    """Copy a model that lives on this machine into the Space; return its name there (relative to app.py)."""
    path_text = spec.removeprefix("local-dir:")
    path = Path(path_text).expanduser()
    if parse_hub_name(spec) is not None or not path.exists():
        return spec  # a Hub or open_clip name: the Space fetches it
    target = models_dir / f"{index}-{path.stem if path.is_file() else path.name}"
    if path.is_file():
        target.mkdir(parents=True)
        shutil.copyfile(path, target / path.name)
        return f"./models/{target.name}/{path.name}"
    shutil.copytree(path, target, ignore=shutil.ignore_patterns(*(p.rstrip("/") for p in NEVER_PUSHED)))
    prefix = "local-dir:" if spec.startswith("local-dir:") or (path / "open_clip_config.json").is_file() else ""
    return f"{prefix}./models/{target.name}"


def export_space(
    out,
    models,
    pipeline: str | None = None,
    corrections=(),
    *,
    requirement: str | None = None,
    overwrite: bool = False,
    title: str = "Does it get no?",
) -> Path:
    """Write ``app.py``, ``requirements.txt``, ``README.md`` (Spaces metadata) and ``models/`` to ``out``."""
    import gradio

    out = Path(out)
    check_replaceable(out, overwrite)  # before copying models
    for name in models:
        check_model_name(name)
    check_corrections(corrections)
    for spec in corrections:
        if spec.startswith("steering:") and not Path(spec.split(":")[1]).is_file():
            raise AppError(f"--correction {spec}: no such steering file")

    def write(tmp: Path) -> None:
        names = [_copy_model(name, tmp / "models", i) for i, name in enumerate(models, 1)]
        fixes = []
        for spec in corrections:
            if spec.startswith("steering:"):
                name, file, *options = spec.split(":")
                (tmp / "corrections").mkdir(exist_ok=True)
                shutil.copyfile(file, tmp / "corrections" / Path(file).name)
                spec = ":".join([name, f"./corrections/{Path(file).name}", *options])
            fixes.append(spec)
        (tmp / "app.py").write_text(
            APP_TEMPLATE.format(
                models=json.dumps(names),
                pipeline=json.dumps(pipeline) if pipeline else "None",
                corrections=json.dumps(fixes),
            )
        )
        requirements = [requirement or f"negation-plugins[app]=={__version__}", f"gradio=={gradio.__version__}"]
        (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
        generate = (
            f"\n\nGenerate: one prompt through `{pipeline}` twice, same seed, with its stock text encoder and with "
            "a negation-aware one swapped in."
            if pipeline
            else ""
        )
        (tmp / "README.md").write_text(
            README_TEMPLATE.format(
                title=title,
                gradio_version=gradio.__version__,
                what="these text encoders" if len(models) > 1 else "this text encoder",
                generate=generate,
                model_list="\n".join(f"- `{name}`" for name in models),
            )
        )

    return atomic_folder(out, write, overwrite=overwrite)
