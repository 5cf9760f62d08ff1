"""Checkpoints from strangers: tensors load, wrappers unwrap, code-carrying files are refused unexecuted."""

import pathlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

from negation_plugins.safe_load import UnsafeCheckpointError, load_state_dict


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"token_embedding.weight": torch.randn(5, 4, generator=g), "logit_scale": torch.tensor(4.6)}


def _assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class WritesMarker:
    """Unpickling this runs ``Path(marker).write_text(...)``: the classic pickle payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "payload ran"))


@pytest.mark.parametrize(
    "wrap", [lambda sd: sd, lambda sd: {"model": sd, "epoch": 3}, lambda sd: {"state_dict": sd, "optimizer": {}}]
)
def test_plain_and_wrapped_pickles_load(tmp_path, wrap):
    weights = _weights()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(weights), path)
    _assert_same(load_state_dict(path), weights)


def test_module_prefix_is_stripped_and_safetensors_load(tmp_path):
    weights = _weights()
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "ddp.pt")
    _assert_same(load_state_dict(tmp_path / "ddp.pt"), weights)
    save_file(weights, str(tmp_path / "w.safetensors"))
    _assert_same(load_state_dict(tmp_path / "w.safetensors"), weights)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on plain pickles, expected here
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "negationclip_ViT-B32.pth"
    payload = {"model": {"w": torch.zeros(1)}, "extra": WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match="negationclip_ViT-B32.pth.*needs code"):
        load_state_dict(path)
    assert not marker.exists()
    # The payload is real: an unsafe load does run it (this is what load_state_dict prevents).
    torch.load(path, weights_only=False) if writer == "torch.save" else pickle.loads(path.read_bytes())
    assert marker.read_text() == "payload ran"


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_state_dict(path)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_state_dict(tmp_path / "missing.pth")
    torch.save({"note": "hello", "w": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="odd.pth.*'note'.*not tensors"):
        load_state_dict(tmp_path / "odd.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pth"):
        load_state_dict(tmp_path / "junk.pth")
