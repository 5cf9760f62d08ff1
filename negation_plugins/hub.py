"""Push a trained folder (or just its adapters) to the Hugging Face Hub: ``negclip push DIR REPO_ID``.

Uses huggingface_hub's HfApi (create the repo if needed, then one commit with the folder). The token is passed
to HfApi only; it is never written to a file, card or log line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from .hookspecs import hookimpl

logger = logging.getLogger(__name__)

# What ``--adapter-only`` uploads: the peft adapter, the diffusers text-encoder LoRA and the model card.
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "pytorch_lora_weights.safetensors",
)
CARD_FILE = "README.md"


class PushError(click.ClickException):
    """A push that cannot start or that the Hub refused; the CLI prints its message without a traceback."""


def adapter_patterns() -> list[str]:
    """Glob patterns (huggingface_hub uses fnmatch, where ``*`` also crosses ``/``) for adapter files at any depth."""
    return [CARD_FILE] + [pattern for name in ADAPTER_FILES for pattern in (name, f"*/{name}")]


def files_to_push(folder: Path, adapter_only: bool) -> list[str]:
    """Relative paths that a push would upload, so an empty selection fails before any network call."""
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    paths = [p for p in paths if not p.startswith(".git/") and not p.startswith(".cache/")]
    if adapter_only:
        paths = [p for p in paths if p == CARD_FILE or p.rsplit("/", 1)[-1] in ADAPTER_FILES]
    return paths


def push(
    folder,
    repo_id: str,
    adapter_only: bool = False,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` (if missing) and upload ``folder`` in one commit; return the commit URL.

    ``adapter_only`` uploads only peft adapter files, diffusers LoRA weights and README.md (at any depth).
    ``token`` defaults to huggingface_hub's own lookup (``HF_TOKEN`` or the saved login).
    """
    import httpx2
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"cannot push {folder}: not a directory")
    selected = files_to_push(folder, adapter_only)
    if adapter_only and selected and all(p == CARD_FILE for p in selected):
        raise PushError(
            f"--adapter-only: {folder} holds no adapter files ({', '.join(ADAPTER_FILES)}), only {CARD_FILE}; "
            "it is a fully tuned output: push it without --adapter-only"
        )
    if not selected:
        what = f"adapter files ({', '.join(ADAPTER_FILES)}) or {CARD_FILE}" if adapter_only else "files"
        raise PushError(f"nothing to push: {folder} holds no {what}")
    if constants.is_offline_mode():
        raise PushError("cannot push: HF_HUB_OFFLINE is set; unset it to reach the Hub")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise PushError(f"--endpoint {endpoint!r}: expected an http:// or https:// URL")
    token = token or None  # an empty --token / HF_TOKEN means "not given"
    if token is None and get_token() is None:
        raise PushError("no Hub token: pass --token, set HF_TOKEN or log in with `hf auth login`")

    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or (
        f"Upload negation-aware CLIP {'adapters' if adapter_only else 'model'} with negation-plugins"
    )
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=message,
            allow_patterns=adapter_patterns() if adapter_only else None,
            repo_type="model",
        )
    except (HfHubHTTPError, OfflineModeIsEnabled, ValueError) as error:
        raise PushError(f"push of {folder} to {repo_id} failed: {_without(token, str(error))}") from None
    except httpx2.TransportError as error:  # huggingface_hub already retried with backoff
        where = endpoint or constants.ENDPOINT
        raise PushError(f"push of {folder} to {repo_id}: cannot reach the Hub at {where} ({error})") from None
    logger.info("pushed %d file(s) from %s to %s", len(selected), folder, commit.commit_url)
    return commit.commit_url


def _without(token: str | None, text: str) -> str:
    """Error texts echo server replies; make sure a token never reaches the terminal through them."""
    return text.replace(token, "***") if token else text


@hookimpl
def register_commands(cli):
    @cli.command(name="push")
    @click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("repo_id")
    @click.option(
        "--adapter-only",
        is_flag=True,
        help="Upload only the LoRA adapters (peft + diffusers) and README.md.",
    )
    @click.option("--private", is_flag=True, help="Create the repository as private.")
    @click.option(
        "--endpoint",
        default=None,
        help="Hub endpoint URL (default: huggingface_hub's, i.e. HF_ENDPOINT).",
    )
    @click.option(
        "--token",
        default=None,
        help="Hub token (default: the HF_TOKEN variable or your saved login).",
    )
    @click.option("--message", "commit_message", default=None, help="Commit message.")
    def push_command(folder, repo_id, adapter_only, private, endpoint, token, commit_message):
        """Push a trained FOLDER (open_clip + transformers + adapters + card) to the Hub as REPO_ID."""
        url = push(
            folder,
            repo_id,
            adapter_only=adapter_only,
            private=private,
            token=token or os.environ.get("HF_TOKEN"),
            endpoint=endpoint,
            commit_message=commit_message,
        )
        click.echo(f"pushed {folder} to {url}")
