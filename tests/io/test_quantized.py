"""Quantized checkpoints: FP8 weights de-quantized block by block (known answers against float64 references of the
de-quantized tensors), every other quantized layout refused in one line (docs/quantized.md)."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import updelta
from updelta.errors import CheckpointError, PairingError
from updelta.io import open_checkpoint
from updelta.io.readers import open_reader, reader_scope

import ckpt
from clirun import run_main

FP8 = torch.float8_e4m3fn
BLOCK = 128
FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
Q = "model.layers.0.self_attn.q_proj.weight"  # 200 x 300: edge blocks in both directions
DOWN = "model.layers.0.mlp.down_proj.weight"  # 256 x 128: whole blocks


def quantize(w: torch.Tensor, block=(BLOCK, BLOCK)) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 codes, float32 scale_inv [ceil(out/bo), ceil(in/bi)]) of w, as DeepSeek and transformers store them."""
    rows, cols = w.shape
    nb = (-(-rows // block[0]), -(-cols // block[1]))
    s = torch.empty(nb, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=FP8)
    for i in range(nb[0]):
        for j in range(nb[1]):
            blk = w[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]].float()
            s[i, j] = max(float(blk.abs().max()), 1e-12) / 448.0
            q[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] = (blk / s[i, j]).to(FP8)
    return q, s


def dequant(q: torch.Tensor, s: torch.Tensor, block=(BLOCK, BLOCK)) -> torch.Tensor:
    """The float32 values q * s of each element's block (the reference; float32 product, as updelta reads)."""
    rows, cols = q.shape
    full = s.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return q.float() * full


def _dense(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.embed_tokens.weight": (torch.randn(64, 32, generator=g) * 0.05).bfloat16(),
            Q: torch.randn(200, 300, generator=g) * 0.02,
            DOWN: torch.randn(256, 128, generator=g) * 0.03,
            "model.layers.0.input_layernorm.weight": (1 + 0.01 * torch.randn(32, generator=g)).bfloat16()}


def _fp8_state(dense: dict, plant: bool) -> dict[str, torch.Tensor]:
    """FP8 checkpoint of `dense`; with `plant`, q_proj's codes change in its edge block (1, 2) and down_proj's
    block (1, 0) scale is 1.5x: everything else is bit-identical to the unplanted one."""
    sd = {}
    for name, w in dense.items():
        if w.dtype == torch.bfloat16:
            sd[name] = w
            continue
        q, s = quantize(w)
        if plant and name == Q:
            w2 = w.clone()
            w2[130:150, 260:290] += 0.004
            q[128:, 256:] = (w2[128:, 256:] / s[1, 2]).clamp(-448, 448).to(FP8)  # same scale, new codes there
        if plant and name == DOWN:
            s = s.clone()
            s[1, 0] *= 1.5
        sd[name] = q
        sd[name + "_scale_inv"] = s
    return sd


def _values(sd: dict) -> dict[str, torch.Tensor]:
    """The float64 values updelta must measure: de-quantized FP8 weights, widened dense ones."""
    return {n: (dequant(t, sd[n + "_scale_inv"]) if t.dtype == FP8 else t.float()).double()
            for n, t in sd.items() if not n.endswith("_scale_inv")}


def _save(sd: dict, path, quant: dict | None = FP8_CONFIG):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    if quant is not None:
        cfg["quantization_config"] = quant
    return ckpt.save(sd, path, config=cfg)


def _reference(w0: torch.Tensor, w1: torch.Tensor, atol=1e-5, eta=1e-3) -> dict:
    a, b = w0.reshape(-1), w1.reshape(-1)
    d = b - a
    return {"delta_fro": float(d.norm()), "rel_delta": float(d.norm() / a.norm()),
            "cos_delta_base": float((d * a).sum() / (d.norm() * a.norm())) if d.norm() > 0 else math.nan,
            "delta_max": float(d.abs().max()), "sparsity_exact": float((a == b).double().mean()),
            "sparsity_atol": float((d.abs() <= atol).double().mean()),
            "sparsity_rtol": float((d.abs() <= eta * torch.maximum(a.abs(), b.abs())).double().mean())}


def _check(res, v0: dict, v1: dict) -> None:
    rows = res.tensors.set_index("name")
    assert set(rows.index) == set(v0)  # no scale tensor is a row
    for name in v0:
        ref, row = _reference(v0[name], v1[name]), rows.loc[name]
        for col, want in ref.items():
            got = float(row[col])
            if math.isnan(want):
                assert math.isnan(got), (name, col)
            else:
                assert got == pytest.approx(want, rel=1e-6, abs=1e-12), (name, col, got, want)
    w0 = torch.cat([v0[n].reshape(-1) for n in v0])
    w1 = torch.cat([v1[n].reshape(-1) for n in v0])
    summ = res.summary.iloc[0]
    assert float(summ["delta_fro"]) == pytest.approx(float((w1 - w0).norm()), rel=1e-6)


@pytest.fixture(scope="module")
def fp8_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp8")
    dense = _dense(0)
    base, run = _fp8_state(dense, plant=False), _fp8_state(dense, plant=True)
    return _save(base, d / "base"), _save(run, d / "run"), base, run


def test_reader_gives_the_dequantized_values_at_any_offset(fp8_pair):
    b, _, base, _ = fp8_pair
    want = dequant(base[Q], base[Q + "_scale_inv"]).reshape(-1).numpy()
    with open_checkpoint(b) as ck:
        ref = ck.tensors[Q]
        assert ref.dtype == "float32" and ref.stored_dtype == "float8_e4m3fn" and ref.shape == (200, 300)
        loc = ref.location
        assert loc.dtype == "float32" and loc.dequant.block == (128, 128) and loc.dequant.dtype == "float8_e4m3fn"
        np.testing.assert_array_equal(ref.read(0, ref.numel), want)
        with reader_scope():
            rd = open_reader(loc)
            # starts and counts that cut rows, row blocks and column blocks anywhere
            for start, count in [(0, 1), (299, 2), (127 * 300 + 250, 700), (128 * 300 - 1, 301), (37, 59_000),
                                 (199 * 300 + 17, 283), (0, 60_000)]:
                np.testing.assert_array_equal(rd.read(start, count), want[start:start + count], err_msg=str(start))
        assert ck.identity()["dtypes"] == {"bfloat16": 2, "float8_e4m3fn": 2}
        assert Q + "_scale_inv" not in ck.tensors and ck.quantization["dequantized"] == 2


@pytest.mark.parametrize("block", [1 << 18, 777])  # whole tensors per block; blocks that cut rows anywhere
def test_fp8_base_vs_fp8_run_known_answer(fp8_pair, block):
    b, r, base, run = fp8_pair
    res = updelta.diff(b, r, spectral="off", block_elems=block)
    v0, v1 = _values(base), _values(run)
    _check(res, v0, v1)
    rows = res.tensors.set_index("name")
    # identical bits and scales give D = 0 exactly; the planted blocks are the only changes
    assert rows.loc["model.embed_tokens.weight", "delta_fro"] == 0.0
    assert rows.loc[Q, "sparsity_exact"] < 1.0 and rows.loc[DOWN, "sparsity_exact"] < 1.0
    changed = (v1[Q] != v0[Q]).nonzero()
    assert changed[:, 0].min() >= 128 and changed[:, 1].min() >= 256  # inside the edge block only
    notes = res.meta["pairing"]["dequantized"]
    assert set(notes) == {"base", "run"}
    for side in notes.values():
        assert sorted(side["scales used to de-quantize"]) == sorted([Q + "_scale_inv", DOWN + "_scale_inv"])
        assert side["blocks"] == {"128x128": 2} and side["stored_dtypes"] == {"float8_e4m3fn": 2}


def test_fp8_spectral_columns_use_the_dequantized_values(fp8_pair):
    b, r, base, run = fp8_pair
    res = updelta.diff(b, r, include=["down_proj"])
    v0, v1 = _values(base)[DOWN], _values(run)[DOWN]
    sv = torch.linalg.svdvals(v1 - v0)
    row = res.tensors.set_index("name").loc[DOWN]
    assert float(row["stable_rank"]) == pytest.approx(float((sv ** 2).sum() / sv[0] ** 2), rel=1e-4)


@pytest.mark.parametrize("sides", ["fp8_bf16", "bf16_fp8"])
def test_fp8_against_a_dequantized_bf16_checkpoint(tmp_path, fp8_pair, sides):
    b, _, base, _ = fp8_pair
    v0 = _values(base)
    g = torch.Generator().manual_seed(3)
    bf = {n: (v.float() + 1e-3 * torch.randn(v.shape, generator=g)).bfloat16() for n, v in v0.items()}
    p = _save(bf, tmp_path / "bf16", quant=None)
    vb = {n: t.double() for n, t in bf.items()}
    if sides == "fp8_bf16":
        _check(updelta.diff(b, p, spectral="off"), v0, vb)
    else:
        _check(updelta.diff(p, b, spectral="off"), vb, v0)


def test_per_tensor_and_per_row_scales(tmp_path):
    # compressed-tensors: one weight_scale per tensor ([1]); FBGEMM: one per output row ([out, 1]); both
    # multiply the codes. Activation scales (input_scale) are neither weights nor compared.
    g = torch.Generator().manual_seed(5)
    w = torch.randn(200, 300, generator=g) * 0.02
    s_t = torch.tensor([float(w.abs().max()) / 448])
    s_r = (w.abs().amax(1, keepdim=True) / 448).float()
    qt, qr = (w / s_t).to(FP8), (w / s_r).to(FP8)
    sd0 = {Q: qt, Q.replace(".weight", ".weight_scale"): s_t, Q.replace(".weight", ".input_scale"): torch.ones(1),
           DOWN: qr[:, :128].contiguous(), DOWN.replace(".weight", ".weight_scale"): s_r}
    sd1 = dict(sd0)
    sd1[Q.replace(".weight", ".weight_scale")] = s_t * 1.25
    p0 = _save(sd0, tmp_path / "a", {"quant_method": "compressed-tensors", "format": "float-quantized"})
    p1 = _save(sd1, tmp_path / "b", {"quant_method": "compressed-tensors", "format": "float-quantized"})
    v0 = {Q: (qt.float() * s_t).double(), DOWN: (qr[:, :128].float() * s_r).double()}
    v1 = {Q: (qt.float() * (s_t * 1.25)).double(), DOWN: v0[DOWN]}
    res = updelta.diff(p0, p1, spectral="off")
    _check(res, v0, v1)
    q = res.meta["pairing"]["dequantized"]["base"]
    assert q["blocks"] == {"per tensor": 1, "per row": 1}
    assert q["activation scales (not compared)"] == [Q.replace(".weight", ".input_scale")]


def test_checkpoint_quantized_by_transformers_own_fp8_code(tmp_path):
    # transformers' FP8 quantizer wants a GPU in from_pretrained; its conversion op (`Fp8Quantize`, what
    # save_pretrained runs) is plain torch, so a tiny Llama is quantized with it here, and transformers' own
    # de-quantization (`_dequantize_fp8_weight`) is the reference of every value updelta reads.
    tr = pytest.importorskip("transformers")
    fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
    config = tr.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=384, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    tr.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "dense")
    from safetensors.torch import load_file
    dense = load_file(str(tmp_path / "dense" / "model.safetensors"))
    qcfg = tr.FineGrainedFP8Config()
    op = fp8.Fp8Quantize(type("HfQuantizer", (), {"quantization_config": qcfg})())
    sd = {}
    for name, w in dense.items():
        sd.update(op.convert({name: w}) if w.ndim == 2 and "proj" in name else {name: w})
    assert sum(t.dtype == FP8 for t in sd.values()) == 7  # q, k, v, o, gate, up, down
    cfg = json.loads((tmp_path / "dense" / "config.json").read_text())
    cfg["quantization_config"] = {k: (v.value if hasattr(v, "value") else v) for k, v in qcfg.to_dict().items()}
    out = ckpt.save(sd, tmp_path / "fp8", config=cfg)
    want = {n: (fp8._dequantize_fp8_weight(t, sd[n + "_scale_inv"], [128, 128], torch.float32)
                if t.dtype == FP8 else t.float()) for n, t in sd.items() if not n.endswith("_scale_inv")}
    with open_checkpoint(out) as ck:
        assert set(ck.tensors) == set(want)
        for n in (n for n, t in sd.items() if t.dtype == FP8):  # bit for bit what transformers computes
            assert ck.tensors[n].dtype == "float32" and ck.tensors[n].stored_dtype == "float8_e4m3fn"
            np.testing.assert_array_equal(ck.tensors[n].read(0, want[n].numel()), want[n].reshape(-1).numpy())
    res = updelta.diff(tmp_path / "dense", out, spectral="off")
    _check(res, {n: t.float().double() for n, t in dense.items()}, {n: t.double() for n, t in want.items()})
    rows = res.tensors.set_index("name")
    assert (rows["rel_delta"] < 0.1).all() and rows.loc["model.norm.weight", "delta_fro"] == 0.0


def test_stacked_experts_with_power_of_two_scales(tmp_path):
    # [E, out, in] FP8 experts with one [E, ceil(out/128), ceil(in/128)] grid of e8m0 ("ue8m0") scales: each expert
    # is de-quantized with its own grid.
    g = torch.Generator().manual_seed(7)
    codes = (torch.randn(3, 130, 260, generator=g) * 50).clamp(-448, 448).to(FP8)
    exps = torch.randint(120, 130, (3, 2, 3), generator=g)
    scale = (2.0 ** (exps - 127).float()).to(torch.float8_e8m0fnu)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    p = _save({name: codes, name + "_scale_inv": scale, "model.norm.weight": torch.ones(8)}, tmp_path / "e",
              {**FP8_CONFIG, "scale_fmt": "ue8m0"})
    want = torch.stack([dequant(codes[e], scale[e].float()) for e in range(3)]).reshape(-1).numpy()
    with open_checkpoint(p) as ck:
        ref = ck.tensors[name]
        assert ref.shape == (3, 130, 260) and set(ck.tensors) == {name, "model.norm.weight"}
        np.testing.assert_array_equal(ref.read(0, ref.numel), want)
        np.testing.assert_array_equal(ref.read(130 * 260 - 5, 300), want[130 * 260 - 5:130 * 260 + 295])


def test_dense_tensors_named_like_scales_are_compared_as_weights(tmp_path):
    # "P_scale" beside a dense "P" is an ordinary parameter of a dense model, not a quantization scale
    sd = {"model.layers.0.mixer.D": torch.ones(16), "model.layers.0.mixer.D_scale": torch.ones(16) * 2}
    a = ckpt.save(sd, tmp_path / "a.safetensors")
    b = ckpt.save({k: v * 1.5 for k, v in sd.items()}, tmp_path / "b.safetensors")
    res = updelta.diff(a, b, spectral="off")
    assert set(res.tensors["name"]) == set(sd) and not res.meta["pairing"]["dequantized"]


# ---- refusals: one line, exit 2, no output files ------------------------------------------------------------------

def _cli_refuses(monkeypatch, capsys, tmp_path, base, run, *words):
    out = tmp_path / "out.parquet"
    code, stdout, err = run_main(monkeypatch, capsys, "diff", base, run, "--spectral", "off", "--out", out)
    lines = [x for x in err.strip().splitlines() if x]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob("out*"))
    return lines[0]


def _refusal_cases(tmp_path, base):
    u8, i32 = torch.uint8, torch.int32
    z = torch.zeros
    p = "model.layers.0.self_attn.q_proj"
    e = "model.layers.0.mlp.experts.gate_up_proj"
    cases = {
        "mxfp4": ({e + "_blocks": z(4, 64, 2, 16, dtype=u8), e + "_scales": z(4, 64, 2, dtype=u8)},
                  {"quant_method": "mxfp4"}, ["MXFP4", e + "_blocks", "Mxfp4Config(dequantize=True)"]),
        "mxfp4_no_config": ({e + "_blocks": z(4, 64, 2, 16, dtype=u8), e + "_scales": z(4, 64, 2, dtype=u8)},
                            None, ["MXFP4", e + "_blocks"]),
        "gptq": ({p + ".qweight": z(4, 32, dtype=i32), p + ".qzeros": z(1, 4, dtype=i32),
                  p + ".scales": torch.ones(1, 32, dtype=torch.float16), p + ".g_idx": z(32, dtype=i32)},
                 {"quant_method": "gptq", "bits": 4}, ["GPTQ/AWQ", "gptq", "qweight"]),
        "awq_no_config": ({p + ".qweight": z(32, 4, dtype=i32), p + ".qzeros": z(1, 4, dtype=i32),
                           p + ".scales": torch.ones(1, 32, dtype=torch.float16)}, None, ["GPTQ/AWQ", "qweight"]),
        "bnb4": ({p + ".weight": z(512, 1, dtype=u8), p + ".weight.absmax": torch.ones(16),
                  p + ".weight.quant_map": torch.ones(16), p + ".weight.quant_state.bitsandbytes__nf4": z(8, dtype=u8)},
                 {"quant_method": "bitsandbytes", "load_in_4bit": True}, ["bitsandbytes", "model.dequantize()"]),
        "bnb4_no_config": ({p + ".weight": z(512, 1, dtype=u8), p + ".weight.absmax": torch.ones(16),
                            p + ".weight.quant_map": torch.ones(16)}, None, ["bitsandbytes", ".weight.absmax"]),
        "bnb8": ({p + ".weight": z(32, 32, dtype=torch.int8), p + ".SCB": torch.ones(32),
                  p + ".weight_format": z(1, dtype=u8)}, {"quant_method": "bitsandbytes", "load_in_8bit": True},
                 ["bitsandbytes", p + ".SCB"]),
        "compressed": ({p + ".weight_packed": z(32, 4, dtype=i32), p + ".weight_scale": torch.ones(32, 1),
                        p + ".weight_shape": torch.tensor([32, 32])}, {"quant_method": "compressed-tensors"},
                       ["compressed-tensors", "weight_packed"]),
        "int8_scale": ({p + ".weight": z(32, 32, dtype=torch.int8), p + ".weight_scale": torch.ones(32, 1)},
                       {"quant_method": "compressed-tensors"}, [p + ".weight_scale", "int8, not FP8"]),
        "other_method": ({p + ".weight": z(32, 32, dtype=torch.int8)}, {"quant_method": "quanto"},
                         ["quanto", p + ".weight", "int8"]),
        "fp8_no_scale": ({p + ".weight": z(32, 32, dtype=FP8)}, FP8_CONFIG, [p + ".weight", "no scale tensor"]),
        "scale_misfit": ({p + ".weight": z(200, 300, dtype=FP8), p + ".weight_scale_inv": torch.ones(2, 2)},
                         FP8_CONFIG, [p + ".weight_scale_inv", "[2, 2]", "[2, 3]", "does not fit"]),
        "no_block_size": ({p + ".weight": z(200, 300, dtype=FP8), p + ".weight_scale_inv": torch.ones(2, 3)},
                          None, [p + ".weight_scale_inv", "weight_block_size"]),
        "fp8_other_method": ({p + ".weight": z(32, 32, dtype=FP8), p + ".weight_scale_inv": torch.ones(1, 1)},
                             {"quant_method": "quark"}, ["quark", p + ".weight"]),
        "orphan_scale": ({p + ".weight": torch.ones(32, 32), p + ".weight_scale_inv": torch.ones(1, 1)},
                         FP8_CONFIG, [p + ".weight_scale_inv", "float32, not FP8"]),
    }
    return cases


@pytest.mark.parametrize("case", ["mxfp4", "mxfp4_no_config", "gptq", "awq_no_config", "bnb4", "bnb4_no_config",
                                  "bnb8", "compressed", "int8_scale", "other_method", "fp8_no_scale", "scale_misfit",
                                  "no_block_size", "orphan_scale", "fp8_other_method"])
def test_unsupported_quantization_is_refused_in_one_line(monkeypatch, capsys, tmp_path, case):
    sd, quant, words = _refusal_cases(tmp_path, None)[case]
    full = {"model.embed_tokens.weight": torch.ones(64, 32), **sd}  # a float tensor in common as well
    bad = _save(full, tmp_path / "q", quant)
    good = ckpt.save({"model.embed_tokens.weight": torch.ones(64, 32)}, tmp_path / "dense")
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(bad)
    assert "\n" not in str(e.value)
    _cli_refuses(monkeypatch, capsys, tmp_path, good, bad, *words)
    _cli_refuses(monkeypatch, capsys, tmp_path, bad, good, *words)


def test_lone_fp8_tensor_without_config_is_refused_by_pairing(tmp_path):
    fp = {"model.embed_tokens.weight": torch.ones(64, 32), "x.weight": torch.ones(8, 8).to(FP8)}
    a = ckpt.save(fp, tmp_path / "a.safetensors")
    b = ckpt.save({**fp, "model.embed_tokens.weight": torch.ones(64, 32) * 2}, tmp_path / "b.safetensors")
    with pytest.raises(PairingError, match="no scale tensor beside it") as e:
        updelta.diff(a, b, spectral="off")
    assert "x.weight" in str(e.value) and "\n" not in str(e.value)


def test_text_summary_says_what_was_dequantized(monkeypatch, capsys, fp8_pair):
    code, out, err = run_main(monkeypatch, capsys, "diff", fp8_pair[0], fp8_pair[1], "--spectral", "off")
    assert code == 0, err
    notes = [x.strip() for x in out.splitlines() if x.strip().startswith("de-quantized")]
    assert len(notes) == 2 and notes[0].startswith("de-quantized (base): ") and notes[1].startswith("de-quantized (run)")
    assert "float8_e4m3fn" in notes[0] and "128x128" in notes[0] and "scale tensors not compared" in notes[0]


def test_stacked_fp8_experts_split_into_rows_read_through_their_scales(tmp_path):
    # A stacked FP8 gate_up_proj [E, 2I, H] splits into per-expert gate/up rows; each row's values are the
    # de-quantized slice (the scale grid is indexed from the stacked tensor's element 0, not the slice's).
    g = torch.Generator().manual_seed(3)
    E, I2, H = 3, 260, 130
    codes0 = (torch.randn(E, I2, H, generator=g) * 50).clamp(-448, 448).to(FP8)
    codes1 = codes0.clone()
    codes1[2, 140:150, 10:20] = (codes1[2, 140:150, 10:20].float() * 1.5).clamp(-448, 448).to(FP8)  # expert 2, up
    scale = torch.rand(E, 3, 2, generator=g) + 0.5
    name = "model.layers.0.mlp.experts.gate_up_proj"
    extra = {"model.layers.0.mlp.experts.down_proj": torch.zeros(E, H, I2 // 2), "model.norm.weight": torch.ones(H)}
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "quantization_config": FP8_CONFIG}
    paths = []
    for tag, codes in (("b", codes0), ("r", codes1)):
        d = tmp_path / tag
        d.mkdir()
        save_file({name: codes, name + "_scale_inv": scale, **extra}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(cfg))
        paths.append(d)
    res = updelta.diff(paths[0], paths[1], spectral="off")
    t = res.tensors
    v0 = torch.stack([dequant(codes0[e], scale[e]) for e in range(E)]).double()
    v1 = torch.stack([dequant(codes1[e], scale[e]) for e in range(E)]).double()
    rows = t[t["module"].str.startswith("experts.") & t["name"].str.contains("gate_proj|up_proj")]
    assert len(rows) == 2 * E
    for e in range(E):
        for j, half in enumerate(("gate_proj", "up_proj")):
            r = rows[(rows["expert"] == e) & rows["name"].str.contains(half)].iloc[0]
            w0, w1 = v0[e, j * 130:(j + 1) * 130], v1[e, j * 130:(j + 1) * 130]
            assert r["delta_fro"] == pytest.approx(float((w1 - w0).norm()), rel=1e-6, abs=1e-12)
            assert r["base_fro"] == pytest.approx(float(w0.norm()), rel=1e-6)
    changed = rows[rows["delta_fro"] > 0]
    assert len(changed) == 1 and int(changed["expert"].iloc[0]) == 2 and "up_proj" in changed["name"].iloc[0]
