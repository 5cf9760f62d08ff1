"""The Hugging Face Hub: models by the names users type (``load_clip``), and ``negclip push DIR REPO_ID``.

Names (one grammar, see :data:`NAME_GRAMMAR`) are fetched with huggingface_hub's ``hf_hub_download``, so its
cache, ``HF_HOME``, ``HF_ENDPOINT``, token and offline mode all apply: a name already in the cache loads with
``HF_HUB_OFFLINE=1``. What was fetched is a local file or folder that the file backends read.

Pushing uses HfApi (create the repo if needed, then one commit with the folder). The token is passed to HfApi
only; it is never written to a file, card or log line.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import click

from .hookspecs import hookimpl
from .textfiles import read_text

logger = logging.getLogger(__name__)

# What ``--adapter-only`` uploads: the peft adapter, the diffusers text-encoder LoRA and the model card.
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "pytorch_lora_weights.safetensors",
)
CARD_FILE = "README.md"
# Never uploaded: the trainer's resumable checkpoints (optimizer states, ~3 GB each at ViT-L/14) and git/cache dirs.
NEVER_PUSHED = ("checkpoints/", ".git/", ".cache/")


class PushError(click.ClickException):
    """A push that cannot start or that the Hub refused; the CLI prints its message without a traceback."""


def adapter_patterns() -> list[str]:
    """Glob patterns (huggingface_hub uses fnmatch, where ``*`` also crosses ``/``) for adapter files at any depth."""
    return [CARD_FILE] + [pattern for name in ADAPTER_FILES for pattern in (name, f"*/{name}")]


def files_to_push(folder: Path, adapter_only: bool) -> list[str]:
    """Relative paths that a push would upload, so an empty selection fails before any network call."""
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    paths = [p for p in paths if not p.startswith(NEVER_PUSHED)]
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
    repo_type: str = "model",
) -> str:
    """Create ``repo_id`` (if missing) and upload ``folder`` in one commit; return the commit URL.

    ``repo_type="space"``: a Gradio Space (e.g. a folder written by ``negclip app --export-space``).

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
    what = "Space" if repo_type == "space" else "adapters" if adapter_only else "model"
    message = commit_message or f"Upload negation-aware CLIP {what} with negation-plugins"
    space_sdk = {"space_sdk": "gradio"} if repo_type == "space" else {}
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, **space_sdk)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=message,
            allow_patterns=adapter_patterns() if adapter_only else None,
            ignore_patterns=[f"{prefix}*" for prefix in NEVER_PUSHED],
            repo_type=repo_type,
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


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUB_PREFIX = "hf-hub:"
NAME_GRAMMAR = (
    "hf-hub:ORG/REPO (an open_clip repo), hf-hub:ORG/REPO/PATH/FILE.pth|.pt|.bin|.safetensors (one checkpoint file in "
    "any Hub repo), ORG/REPO (a transformers CLIP repo), ORG/REPO/SUBFOLDER (a transformers CLIP text model in a "
    "subfolder, e.g. a diffusers text_encoder); any of them with @REVISION (branch, tag or commit)"
)
# Repo ids and path segments as the Hub allows them: word characters, dots and dashes, not at the ends.
_SEGMENT = re.compile(r"\w(?:[\w.-]*\w)?")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TRANSFORMERS_CONFIG = "config.json"
TRANSFORMERS_OPTIONAL = ("preprocessor_config.json",)
# In transformers' order of preference; an index names the shards to fetch next to it.
TRANSFORMERS_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class HubNameError(ValueError):
    """A Hub name that is malformed, or whose repository, revision or file cannot be had. One line, says which."""


@dataclass(frozen=True)
class HubName:
    """A parsed Hub name. ``kind``: "open_clip" (a whole open_clip repo), "file" (one checkpoint file) or
    "transformers" (a repo, or ``path`` its subfolder); ``path`` is relative to the repo root."""

    name: str
    kind: str
    repo_id: str
    path: str = ""
    revision: str | None = None

    @property
    def where(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_name(spec: str) -> HubName | None:
    """The Hub reading of ``spec``, or None for what the local backends read.

    An existing local path always wins (``runs/model`` is a folder, not the repo ``runs/model``). Unprefixed
    names that are not ``ORG/REPO[/SUBFOLDER][@REVISION]`` (open_clip names, ``local-dir:``, absolute paths,
    ``.pth`` paths) are left to the backends, which name a missing file as such.
    """
    if Path(spec).expanduser().exists():
        return None
    prefixed = spec.startswith(HUB_PREFIX)
    body, at, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    parts = body.split("/")
    well_formed = len(parts) >= 2 and all(_SEGMENT.fullmatch(part) for part in parts) and (revision or not at)
    repo_id, path = "/".join(parts[:2]), "/".join(parts[2:])
    if not prefixed:
        if not well_formed or body.endswith(CHECKPOINT_SUFFIXES):
            return None
        return HubName(spec, "transformers", repo_id, path, revision or None)
    if not well_formed:
        raise HubNameError(f"{spec!r} is not a Hub name; Hub names are {NAME_GRAMMAR}")
    if not path:
        return HubName(spec, "open_clip", repo_id, "", revision or None)
    if not path.endswith(CHECKPOINT_SUFFIXES):
        raise HubNameError(
            f"{spec!r}: hf-hub:ORG/REPO/PATH must name a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}); "
            "a transformers subfolder is named without the prefix: ORG/REPO/SUBFOLDER"
        )
    return HubName(spec, "file", repo_id, path, revision or None)


def fetch(name: HubName) -> tuple[str, str]:
    """Download what ``name`` needs into the huggingface_hub cache (or find it there).

    Returns ``(local spec the file backends read, commit)``. Every file after the first is fetched at the first
    one's commit, so a branch that moves meanwhile cannot mix two versions.
    """
    if name.kind == "file":
        path = _download(name, name.path)
        return path, _commit_of(path, name.path)
    if name.kind == "open_clip":
        config = _download(name, OPEN_CLIP_CONFIG, hint=_not_open_clip_hint(name))
        commit = _commit_of(config, OPEN_CLIP_CONFIG)
        _download_first(name, OPEN_CLIP_WEIGHTS, commit)
        return f"local-dir:{Path(config).parent}", commit
    folder = f"{name.path}/" if name.path else ""
    config = _download(name, folder + TRANSFORMERS_CONFIG, hint=_not_transformers_hint(name))
    commit = _commit_of(config, folder + TRANSFORMERS_CONFIG)
    for optional in TRANSFORMERS_OPTIONAL:
        _download(name, folder + optional, commit, missing_ok=True)
    _download_first(name, [folder + weights for weights in TRANSFORMERS_WEIGHTS], commit)
    return str(Path(config).parent), commit


def _commit_of(local_path: str, filename: str) -> str:
    """huggingface_hub stores files as ``.../snapshots/COMMIT/FILENAME``."""
    return Path(local_path).parents[len(filename.split("/")) - 1].name


def _download_first(name: HubName, candidates, commit: str) -> str:
    """The first of ``candidates`` the repo has (with its shards, for an index file)."""
    from huggingface_hub import constants

    for candidate in candidates:
        path = _download(name, candidate, commit, missing_ok=True)
        if path is None:
            continue
        if candidate.endswith(".index.json"):
            folder = candidate.rpartition("/")[0]
            for shard in sorted(set(json.loads(read_text(path))["weight_map"].values())):
                _download(name, f"{folder}/{shard}".lstrip("/"), commit)
        return path
    if constants.is_offline_mode():
        raise HubNameError(_offline_message(name))
    raise HubNameError(f"{name.name}: {name.where} has no weights: none of {', '.join(candidates)}")


def _download(name: HubName, filename: str, revision=None, *, missing_ok=False, hint="") -> str | None:
    """``hf_hub_download`` with its errors said in one line; ``missing_ok``: None for a file the repo lacks (or,
    offline, that the cache lacks)."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .atomic import DiskFullError, disk_full_errno

    try:
        return hf_hub_download(name.repo_id, filename, revision=revision or name.revision)
    except GatedRepoError:
        raise HubNameError(
            f"{name.name}: {name.repo_id} is gated; accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise HubNameError(
            f"{name.name}: {_not_local(name)}there is no repository {name.repo_id} on the Hub at {constants.ENDPOINT} "
            "(or it is private and HF_TOKEN does not grant access)"
        ) from None
    except RevisionNotFoundError:
        raise HubNameError(f"{name.name}: {name.repo_id} has no revision {name.revision!r}") from None
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is one
        if constants.is_offline_mode():
            if missing_ok:
                return None
            raise HubNameError(_offline_message(name)) from None
        reason = str(error.__cause__ or error).splitlines()[0]
        raise HubNameError(
            f"{name.name}: cannot reach the Hub at {constants.ENDPOINT} and {filename} is not in the cache ({reason})"
        ) from None
    except EntryNotFoundError:
        if missing_ok:
            return None
        raise HubNameError(f"{name.name}: {name.where} has no file {filename}{hint}") from None
    except HfHubHTTPError as error:
        reason = str(error).splitlines()[0]
        raise HubNameError(f"{name.name}: the Hub at {constants.ENDPOINT} refused {filename}: {reason}") from None
    except (httpx2.TransportError, OSError) as error:  # huggingface_hub resumed a broken download, and gave up
        if disk_full_errno(error) is not None:
            raise DiskFullError(disk_full_errno(error), constants.HF_HUB_CACHE) from None
        if isinstance(error, OSError) and "Consistency check failed" not in str(error):
            raise
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise HubNameError(
            f"{name.name}: the download of {filename} from {name.repo_id} broke off and could not be resumed "
            f"({reason}); nothing incomplete is used: run the same command again to resume it"
        ) from None


def _offline_message(name: HubName) -> str:
    from huggingface_hub import constants

    return (
        f"{name.name}: {_not_local(name)}not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
        "is set; load it once online (or unset HF_HUB_OFFLINE)"
    )


def _not_local(name: HubName) -> str:
    """An unprefixed name may be a mistyped local path: say that it was looked for there too."""
    return "not a local path, and " if name.kind == "transformers" else ""


def _not_open_clip_hint(name: HubName) -> str:
    return (
        f": not an open_clip repo. Name one checkpoint file in it as hf-hub:{name.repo_id}/FILE.pth, "
        f"or a transformers CLIP repo without the prefix: {name.repo_id}"
    )


def _not_transformers_hint(name: HubName) -> str:
    return (
        ": not a transformers model folder. For a diffusers pipeline name its text encoder "
        f"({name.repo_id}/text_encoder); for an open_clip repo use hf-hub:{name.repo_id}"
    )


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
    @click.option(
        "--repo-type",
        type=click.Choice(["model", "space"]),
        default="model",
        show_default=True,
        help="space: a Gradio Space folder (from `negclip app --export-space`).",
    )
    def push_command(folder, repo_id, adapter_only, private, endpoint, token, commit_message, repo_type):
        """Push a trained FOLDER (open_clip + transformers + adapters + card) to the Hub as REPO_ID."""
        url = push(
            folder,
            repo_id,
            adapter_only=adapter_only,
            private=private,
            token=token or os.environ.get("HF_TOKEN"),
            endpoint=endpoint,
            commit_message=commit_message,
            repo_type=repo_type,
        )
        click.echo(f"pushed {folder} to {url}")
