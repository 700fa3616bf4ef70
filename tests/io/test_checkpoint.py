"""Checkpoint layouts and bad input: every layout reads the same tensors; bad files fail with one clear line."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import updelta
from updelta.errors import CheckpointError
from updelta.io import open_checkpoint

import ckpt


@pytest.mark.parametrize("layout", ["folder", "sharded", "bin", "bin_sharded", "file_st", "file_bin", "file_pt"])
def test_every_layout_reads_the_same_tensors(tmp_path, layout):
    sd = ckpt.llama_state(dtype=torch.float32)
    path = {
        "folder": lambda: ckpt.save(sd, tmp_path / "m"),
        "sharded": lambda: ckpt.save(sd, tmp_path / "m", shards=3),
        "bin": lambda: ckpt.save(sd, tmp_path / "m", fmt="bin"),
        "bin_sharded": lambda: ckpt.save(sd, tmp_path / "m", fmt="bin", shards=2),
        "file_st": lambda: ckpt.save(sd, tmp_path / "m.safetensors"),
        "file_bin": lambda: ckpt.save(sd, tmp_path / "m.bin"),
        "file_pt": lambda: ckpt.save(sd, tmp_path / "m.pt"),
    }[layout]()
    with open_checkpoint(path) as ck:
        assert set(ck.tensors) == set(sd)
        for name, t in sd.items():
            ref = ck.tensors[name]
            assert ref.shape == tuple(t.shape) and ref.dtype == "float32"
            np.testing.assert_array_equal(ref.read(0, ref.numel), t.reshape(-1).numpy())
            if ref.numel > 5:
                np.testing.assert_array_equal(ref.read(3, 2), t.reshape(-1)[3:5].numpy())
        ident = ck.identity()
        assert ident["n_tensors"] == len(sd) and ident["bytes"] > 0 and ident["dtypes"] == {"float32": len(sd)}


def test_bf16_reads_as_raw_bits(tmp_path):
    t = torch.tensor([1.0, -2.5, 3e-3], dtype=torch.bfloat16)
    p = ckpt.save({"w": t}, tmp_path / "m.safetensors")
    with open_checkpoint(p) as ck:
        raw = ck.tensors["w"].read(0, 3)
    assert raw.dtype == np.uint16
    widened = (raw.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened, t.float().numpy())


def _bad(path, *parts):
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_missing_path(tmp_path):
    _bad(tmp_path / "nope", "nope", "no such file")


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    _bad(tmp_path / "empty", "empty", "no weights found")


def test_index_names_missing_shard(tmp_path):
    d = ckpt.save(ckpt.llama_state(), tmp_path / "m", shards=2)
    os.remove(d / "model-00002-of-00002.safetensors")
    _bad(d, "model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing")


@pytest.mark.parametrize("cut", [4, 50, -10])
def test_truncated_safetensors(tmp_path, cut):
    p = ckpt.save(ckpt.llama_state(), tmp_path / "m.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[:cut] if cut > 0 else data[:cut])
    _bad(p, "m.safetensors", "truncated or corrupt")


def test_corrupt_header_json(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes((12).to_bytes(8, "little") + b"{not json!!}" + b"\0" * 16)
    _bad(p, "not valid JSON")


def test_pickle_with_non_tensor_objects_is_refused(tmp_path):
    p = tmp_path / "m.bin"
    torch.save({"w": torch.ones(2), "opt": {1, 2, 3}}, p)  # a set: not allowed by weights_only
    msg = _bad(p, "m.bin")
    assert "tensor" in msg


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['UPDELTA_EVIL_MARK']}",))


def test_malicious_pickle_does_not_run(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("UPDELTA_EVIL_MARK", str(mark))
    p = tmp_path / "evil.bin"
    with open(p, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)  # legacy (non-zip) pickle
    _bad(p, "evil.bin", "refused")
    p2 = tmp_path / "evil2.pt"
    torch.save({"w": torch.ones(1), "x": _Evil()}, p2, _use_new_zipfile_serialization=True)
    assert not mark.exists()  # torch.save itself must not have run it
    _bad(p2, "evil2.pt")
    assert not mark.exists()


def test_state_dict_holding_non_tensor_values(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2), "step": 3}, p)
    _bad(p, "m.pt", "'step'", "not a tensor")


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, p)
    with open_checkpoint(p) as ck:
        assert list(ck.tensors) == ["w"]


def test_memory_is_not_mapped_for_safetensors(tmp_path):
    # Reads go through pread into a reused buffer: the returned array views the caller's buffer.
    p = ckpt.save({"w": torch.arange(1000, dtype=torch.float32)}, tmp_path / "m.safetensors")
    buf = np.empty(4000, dtype=np.uint8)
    with open_checkpoint(p) as ck:
        a = ck.tensors["w"].read(10, 100, buf)
        assert np.shares_memory(a, buf) and a[0] == 10.0
        b = ck.tensors["w"].read(500, 100, buf)
        assert np.shares_memory(b, buf) and b[0] == 500.0 and a[0] == 500.0  # reused


def test_diff_on_bad_input_raises_before_output(tmp_path):
    good = ckpt.save(ckpt.llama_state(), tmp_path / "good")
    with pytest.raises(CheckpointError):
        updelta.diff(good, tmp_path / "missing")


def test_index_json_invalid(tmp_path):
    d = ckpt.save(ckpt.llama_state(), tmp_path / "m", shards=2)
    (d / "model.safetensors.index.json").write_text("{oops")
    _bad(d, "model.safetensors.index.json", "not valid JSON")


def test_config_tie_flag_read(tmp_path):
    d = ckpt.save(ckpt.llama_state(head=False), tmp_path / "m", config={"tie_word_embeddings": True})
    with open_checkpoint(d) as ck:
        assert ck.tie_word_embeddings is True
    json.loads((d / "config.json").read_text())
