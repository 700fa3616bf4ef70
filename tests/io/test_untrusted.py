"""Damaged and hostile checkpoints: nothing the safetensors library rejects is measured, every refusal is one line.

Each kind of damage found by fuzzing (benchmarks/fuzz_readers.py) is a named case here, checked against the library
itself (`safe_open`) as the oracle, then through `updelta.diff` and the CLI (exit 2, one line, no output file).
"""
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import updelta
from updelta.errors import CheckpointError, PairingError, UpdeltaError
from updelta.io import open_checkpoint

import ckpt
from clirun import run_main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fuzz_readers import library_accepts as _library_accepts  # noqa: E402  (the fuzz job's oracle)


def _state():
    return {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}


def _write(path: Path, header: dict | str | bytes, data: bytes, n: int | None = None) -> Path:
    hb = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(hb) if n is None else n) + hb + data)
    return path


def _valid_header() -> tuple[dict, bytes]:
    data = torch.arange(6, dtype=torch.float32).numpy().tobytes() + torch.ones(4, dtype=torch.bfloat16).view(
        torch.int16).numpy().tobytes()
    return {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}}, data


def _refused(path: Path, *parts: str) -> str:
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path.name) in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


def _mutated(tmp_path, mutate) -> Path:
    h, data = _valid_header()
    out = mutate(h, data)
    if isinstance(out, tuple):
        h, data = out
    return _write(tmp_path / "m.safetensors", h, data)


# Each case: (mutation, words the one-line error must hold). The library rejects all of them.
DAMAGE = {
    "dtype_is_a_list": (lambda h, d: h["a"].update(dtype=["F32"]), "unknown dtype"),
    "dtype_unknown": (lambda h, d: h["a"].update(dtype="F31"), "unknown dtype"),
    "offsets_are_strings": (lambda h, d: h["a"].update(data_offsets=["0", "24"]), "data_offsets"),
    "offsets_are_floats": (lambda h, d: h["a"].update(data_offsets=[0.0, 24.0]), "data_offsets"),
    "offsets_shifted_by_two": (lambda h, d: (h["a"].update(data_offsets=[2, 26]), h["b"].update(
        data_offsets=[26, 34]), (h, d + b"\0\0"))[-1], "hole"),
    "hole_between_tensors": (lambda h, d: (h["b"].update(data_offsets=[28, 36]), (h, d + b"\0" * 4))[-1], "hole"),
    "trailing_bytes": (lambda h, d: (h, d + b"\0\0\0\0"), "after the last tensor"),
    "metadata_not_string_map": (lambda h, d: h.update(__metadata__={"format": 1}), "__metadata__"),
    "metadata_a_list": (lambda h, d: h.update(__metadata__=["pt"]), "__metadata__"),
    "overlapping_tensors": (lambda h, d: (h["b"].update(data_offsets=[16, 24]), (h, d[:24]))[-1], "overlaps"),
    "float_dimension": (lambda h, d: h["a"].update(shape=[2.0, 3]), "shape"),
    "negative_dimension": (lambda h, d: h["a"].update(shape=[-2, -3]), "shape"),
    "boolean_dimension": (lambda h, d: h["b"].update(shape=[True, 4]), "shape"),
    "size_mismatch": (lambda h, d: h["a"].update(shape=[3, 3]), "bytes for shape"),
    "three_offsets": (lambda h, d: h["a"].update(data_offsets=[0, 24, 24]), "data_offsets"),
    "entry_missing_shape": (lambda h, d: h["a"].pop("shape"), "lacks"),
    "entry_not_an_object": (lambda h, d: h.update(a=[1, 2]), "lacks"),
    "shape_overflows": (lambda h, d: h["a"].update(shape=[2 ** 63, 4, 0]), "overflows"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_header_is_refused_in_one_line(tmp_path, case):
    mutate, words = DAMAGE[case]
    p = _mutated(tmp_path, mutate)
    assert not _library_accepts(p), "the oracle accepts this file: the case is wrong"
    _refused(p, words)


@pytest.mark.parametrize("raw,words", [
    ('{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, '
     '"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}', "twice"),
    ('{"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, NaN]}}', "not valid JSON"),
    ('{"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}\x00', "not valid JSON"),
    ('{"\\ud800": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}', "unicode"),
    ('[1]', "not a JSON object"),
    ("[" * 3000 + "]" * 3000, "JSON"),
    ("[" * 100000, "not valid JSON"),
])
def test_header_json_that_python_parses_but_the_library_rejects(tmp_path, raw, words):
    p = _write(tmp_path / "m.safetensors", raw.encode("utf-8", "surrogatepass"), bytes(24))
    dup = raw.count('"a"') == 2
    if not dup:  # the library keeps the last duplicate silently; we refuse duplicates: stricter is allowed
        assert not _library_accepts(p)
    _refused(p, words)


@pytest.mark.parametrize("lie", [0, 7, 2 ** 63, 100_000_001, "size", "minus_one", "plus_one"])
def test_lying_length_prefix(tmp_path, lie):
    h, data = _valid_header()
    hb = json.dumps(h).encode()
    n = {"size": 8 + len(hb) + len(data), "minus_one": len(hb) - 1, "plus_one": len(hb) + 1}.get(lie, lie)
    p = _write(tmp_path / "m.safetensors", hb, data, n=n)
    assert not _library_accepts(p)
    _refused(p, "m.safetensors")


def test_what_the_library_accepts_is_read_exactly(tmp_path):
    # Padding with JSON whitespace, extra keys in an entry, null metadata, tensors listed out of order, a
    # zero-element tensor: all accepted by the library, so they must be read, and read right.
    h, data = _valid_header()
    h["a"]["extra"] = {"x": 1}
    h["__metadata__"] = None
    h["z"] = {"dtype": "F16", "shape": [0, 5], "data_offsets": [0, 0]}
    text = json.dumps(dict(reversed(list(h.items())))) + "   \n"
    p = _write(tmp_path / "m.safetensors", text, data)
    assert _library_accepts(p)
    with open_checkpoint(p) as ck, safe_open(str(p), "pt") as lib:
        assert set(ck.tensors) == set(lib.keys())
        a = ck.tensors["a"].read(0, 6)
        assert a.tolist() == lib.get_tensor("a").reshape(-1).tolist()
        assert ck.tensors["z"].numel == 0


def test_every_library_dtype_is_parsed_and_the_quantized_ones_are_refused_by_name(tmp_path):
    base = ckpt.save({"w": torch.ones(4, 4), "q": torch.ones(4, 4)}, tmp_path / "b.safetensors")
    ft = ckpt.save({"w": torch.ones(4, 4) * 2, "q": torch.ones(4, 4).to(torch.float8_e4m3fn)},
                   tmp_path / "f.safetensors")
    with pytest.raises(PairingError) as e:
        updelta.diff(base, ft, spectral="off")
    assert "q" in str(e.value) and "float8_e4m3fn" in str(e.value) and "\n" not in str(e.value)
    res = updelta.diff(base, ft, spectral="off", exclude=["^q$"])
    assert list(res.tensors["name"]) == ["w"]


def test_quantization_config_with_packed_weights_is_refused(tmp_path):
    sd = {"model.layers.0.self_attn.q_proj.qweight": torch.zeros(4, 4, dtype=torch.int32),
          "model.layers.0.self_attn.q_proj.scales": torch.ones(1, 4, dtype=torch.float16)}
    d = ckpt.save(sd, tmp_path / "gptq", config={"quantization_config": {"quant_method": "gptq"}})
    _refused(d, "gptq", "qweight", "de-quantized")


# ---- shard indexes ---------------------------------------------------------------------------------------------

def _sharded(tmp_path) -> Path:
    return ckpt.save(ckpt.llama_state(), tmp_path / "m", shards=2)


def _edit_index(d: Path, edit) -> Path:
    idx = d / "model.safetensors.index.json"
    obj = json.loads(idx.read_text())
    edit(obj)
    idx.write_text(json.dumps(obj))
    return idx


@pytest.mark.parametrize("value,words", [(None, "not a file name"), (3, "not a file name"),
                                         (["x"], "not a file name"), ("../m.safetensors", "plain file names"),
                                         ("/etc/hostname", "plain file names"), ("sub/x.safetensors", "plain file"),
                                         ("..", "plain file names"), ("", "plain file names")])
def test_index_weight_map_values_are_checked(tmp_path, value, words):
    d = _sharded(tmp_path)
    _edit_index(d, lambda o: o["weight_map"].update({next(iter(o["weight_map"])): value}))
    _refused(d, "model.safetensors.index.json", words)


@pytest.mark.parametrize("wm", [{}, [], None, "x", 1])
def test_index_weight_map_must_be_a_non_empty_map(tmp_path, wm):
    d = _sharded(tmp_path)
    _edit_index(d, lambda o: o.update(weight_map=wm))
    _refused(d, "model.safetensors.index.json", "weight_map")


def test_index_naming_the_wrong_shard_or_a_missing_tensor(tmp_path):
    d = _sharded(tmp_path)
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    name = next(iter(wm))
    other = next(s for s in set(wm.values()) if s != wm[name])
    _edit_index(d, lambda o: o["weight_map"].update({name: other}))
    _refused(d, name, "fix the index")
    d2 = ckpt.save(ckpt.llama_state(), tmp_path / "m2", shards=2)
    _edit_index(d2, lambda o: o["weight_map"].update({"model.ghost.weight": other}))
    _refused(d2, "model.ghost.weight", "does not hold it")


def test_shard_tensor_the_index_does_not_name_is_reported(tmp_path):
    d = _sharded(tmp_path)
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    dropped = "model.layers.0.mlp.up_proj.weight"
    _edit_index(d, lambda o: o["weight_map"].pop(dropped))
    with open_checkpoint(d) as ck:
        assert dropped not in ck.tensors and ck.unindexed == [f"{dropped} ({wm[dropped]})"]
    base = ckpt.save(ckpt.llama_state(), tmp_path / "base")
    res = updelta.diff(base, d, spectral="off")
    assert res.meta["pairing"]["unindexed"] == {"m": [f"{dropped} ({wm[dropped]})"]}


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_index_naming_a_non_regular_file_does_not_hang(tmp_path, kind):
    d = _sharded(tmp_path)
    shard = d / "model-00002-of-00002.safetensors"
    shard.unlink()
    os.mkfifo(shard) if kind == "fifo" else shard.mkdir()
    _refused(d, "model-00002-of-00002.safetensors", "not a regular file")


def test_symlinked_shards_as_in_a_hub_cache_snapshot(tmp_path):
    # snapshots/<rev>/<file> -> ../../blobs/<hash>: relative symlinks are followed.
    sd = ckpt.llama_state()
    src = ckpt.save(sd, tmp_path / "src", shards=2)
    blobs, snap = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        (blobs / f"h{i}").write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / f"h{i}")
    with open_checkpoint(snap) as ck:
        assert set(ck.tensors) == set(sd)
    res = updelta.diff(src, snap, spectral="off")
    assert (res.tensors["delta_fro"] == 0).all() and len(res.tensors) == len(sd)


@pytest.mark.parametrize("raw", [b"", b"[1, 2]", b'"llama"', b"\xff\xfe", b"{" * 100000, b"[" * 5000 + b"]" * 5000,
                                 b'{"tie_word_embeddings": "yes", "architectures": 5, "text_config": []}',
                                 b'{"a": NaN}', b'{"model_type": null, "architectures": [null, 3]}'])
def test_config_json_of_any_content_never_crashes(tmp_path, raw):
    sd = ckpt.llama_state()
    base = ckpt.save(sd, tmp_path / "base")
    d = ckpt.save(ckpt.perturb(sd), tmp_path / "ft")
    (d / "config.json").write_bytes(raw)
    res = updelta.diff(base, d, spectral="off")
    assert len(res.tensors) == len(sd) and (res.tensors["delta_fro"] > 0).all()


# ---- nothing measured is an error ---------------------------------------------------------------------------------

def test_adapter_folder_is_refused_with_the_fix(tmp_path, monkeypatch, capsys):
    base = ckpt.save(ckpt.llama_state(), tmp_path / "base")
    ad = tmp_path / "adapter"
    ckpt.save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 16),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(16, 2)},
              ad / "adapter_model.safetensors")
    (ad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    out = tmp_path / "out.parquet"
    code, stdout, err = run_main(monkeypatch, capsys, "diff", ad, base, "--out", out)  # an adapter as the base
    assert code == 2 and err.count("\n") == 1 and "adapter" in err and "as a run" in err, err
    assert not out.exists() and stdout == ""
    # The same factors in a plain weights file: the pairing names the cause.
    f = ckpt.save({"model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 16)}, tmp_path / "a.safetensors")
    with pytest.raises(PairingError, match="LoRA"):
        updelta.diff(base, f)


def test_different_model_under_skip_is_refused(tmp_path):
    base = ckpt.save(ckpt.llama_state(hidden=16), tmp_path / "base")
    other = ckpt.save(ckpt.llama_state(hidden=8), tmp_path / "other")
    with pytest.raises(PairingError, match="different shape") as e:
        updelta.diff(base, other, on_shape_mismatch="skip")
    assert "\n" not in str(e.value) and "other" in str(e.value)


def test_prefix_mismatch_is_refused(tmp_path):
    base = ckpt.save(ckpt.llama_state(), tmp_path / "base")
    other = ckpt.save({f"encoder.blk{i}.w": torch.ones(3) for i in range(3)}, tmp_path / "enc")
    with pytest.raises(PairingError, match="no tensor name in common"):
        updelta.diff(base, other)


def test_filters_that_leave_nothing_are_refused(tmp_path, llama_pair):
    b, f, _, _ = llama_pair
    with pytest.raises(PairingError, match="--include/--exclude"):
        updelta.diff(b, f, include=["no_such_tensor"])


def test_a_compare_run_with_nothing_in_common_is_refused(tmp_path, llama_pair):
    b, f, _, _ = llama_pair
    other = ckpt.save({"x.w": torch.ones(3)}, tmp_path / "x.safetensors")
    with pytest.raises(UpdeltaError, match="run x"):
        updelta.compare(b, {"f": f, "x": other})


# ---- fuzz sample -----------------------------------------------------------------------------------------------

def test_seeded_fuzz_sample(tmp_path):
    """About 200 seeded cases of the fuzz job (benchmarks/fuzz_readers.py runs 10,000)."""
    import fuzz_readers

    outcomes = fuzz_readers.fuzz(198, seed=0, workdir=tmp_path, progress=False)
    bad = [o for o in outcomes if o.outcome.startswith("VIOLATION")]
    assert not bad, bad[:5]
    kinds = {o.kind for o in outcomes if o.outcome == "measured"} | {o.kind for o in outcomes if o.outcome == "refused"}
    assert kinds == set(fuzz_readers.KINDS)
    assert sum(o.outcome == "measured" for o in outcomes) > 20 and sum(o.outcome == "refused" for o in outcomes) > 100


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.safetensors", "config.json"])
def test_weights_file_that_is_a_fifo_does_not_hang(tmp_path, name):
    d = ckpt.save(ckpt.llama_state(), tmp_path / "m", fmt="safetensors" if name == "config.json" else "bin")
    if name == "model.safetensors":
        (d / "pytorch_model.bin").unlink()
    target = d / name
    if target.exists():
        target.unlink()
    os.mkfifo(target)
    if name == "config.json":
        with open_checkpoint(d) as ck:  # an unreadable config.json only loses what it refines
            assert ck.config == {}
    else:
        _refused(d, name, "not a regular file")
