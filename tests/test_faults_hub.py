"""A Hub download cut mid-file: huggingface_hub resumes it (a Range request) and the model loads whole; a download
that keeps breaking ends in one line naming the repository and file, and nothing incomplete is in the cache as a
complete file."""

from __future__ import annotations

import pytest

import negation_plugins as npl
from negation_plugins.hub import HubNameError
from tests.test_hub_names import CAPTIONS, assert_close, hub, openai_state, reference, torch_bytes  # noqa: F401


def test_a_download_cut_once_is_resumed_and_loads_whole(hub, openai_state, reference, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    monkeypatch.setattr(
        constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20
    )  # (10 MiB by default) some chunks land before the cut
    hub.state.publish("jerryray/negationclip", {"m.pth": torch_bytes(openai_state)})
    hub.state.cut = 1
    bundle = npl.load_clip("hf-hub:jerryray/negationclip/m.pth")
    assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))
    gets = [
        {key.lower(): value for key, value in r["headers"].items()}.get("range")
        for r in hub.state.requests
        if r["method"] == "GET" and "/resolve/" in r["path"]
    ]
    assert len(gets) == 2 and gets[0] is None and gets[1].startswith("bytes=")  # resumed, not downloaded again


def test_a_download_that_keeps_breaking_ends_in_one_line(hub, openai_state, tmp_path):  # noqa: F811
    hub.state.publish("jerryray/negationclip", {"m.pth": torch_bytes(openai_state)})
    hub.state.cut, hub.state.cut_keep = 1000, 0.0
    with pytest.raises(HubNameError) as error:
        npl.load_clip("hf-hub:jerryray/negationclip/m.pth")
    message = str(error.value)
    assert "\n" not in message and "jerryray/negationclip" in message and "m.pth" in message
    assert "broke off and could not be resumed" in message
    cache = tmp_path / "hf_home" / "hub"
    assert not [p for p in cache.rglob("m.pth")]  # no snapshot entry: the file is never taken as complete
    hub.state.cut = 0  # the connection is back: the same call loads it
    npl.load_clip("hf-hub:jerryray/negationclip/m.pth")
