"""In-memory records against the streaming scan and against the metric definitions (float64)."""
from __future__ import annotations

import math

import torch
from ckpt import llama_state, perturb, save

import updelta
from updelta.integrations import memory
from updelta.metrics import elementwise as ew
from updelta.options import DiffOptions

SKIP = {"run", "spectral_s", "topk_sv_err_est"}


def _same(a, b, rel=0.0):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, float(b), rel_tol=rel, abs_tol=0 if rel == 0 else 1e-12)
    return a == b


def test_records_equal_the_scans(tmp_path):
    base = llama_state()
    ft = perturb(base)
    save(base, tmp_path / "base")
    save(ft, tmp_path / "ft")
    opts = DiffOptions(spectral="fast", progress=False)
    r = updelta.diff(tmp_path / "base", tmp_path / "ft", opts, name="ft")
    fam = memory.family_of(base)
    recs = memory.measure({n: (base[n], ft[n]) for n in base}, opts, family=fam, run="ft")
    ref = {row["name"]: row for row in r.tensors.to_dict("records")}
    assert sorted(x["name"] for x in recs) == sorted(ref)
    for rec in recs:
        want = ref[rec["name"]]
        for k, v in rec.items():
            if k in SKIP:
                continue
            v2 = want[k]
            if hasattr(v2, "tolist"):
                v2 = v2.tolist()
            # same kernel, same blocks: the cheap columns are bit-identical; spectral to the solver's 1e-6
            rel = 1e-6 if k in ("stable_rank", "topk_energy", "topk_sv") else 0.0
            assert _same(v, v2, rel), (rec["name"], k, v, v2)


def test_known_answer_with_planted_values():
    w0 = torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan"), -1.0], dtype=torch.float32)
    w1 = torch.tensor([1.0, 2.0, 3.5, 4.0 + 2 ** -21, 5.0, -1.0 - 2 ** -7], dtype=torch.float32)
    opts = DiffOptions(spectral="off", atol=1e-5, eta=1e-3)
    rec = memory.measure_one(0, "model.layers.0.mlp.down_proj.bias", w0, w1, opts, memory.family_of(["model.x"]),
                             "r")
    # planted: element 4 non-finite in the base; D = [0, 0, 0.5, 2^-21, 2^-7] on the other five
    assert (rec["n_compared"], rec["nonfinite_base"], rec["nonfinite_ft"]) == (5, 1, 0)
    assert (rec["n_eq"], rec["n_le_atol"], rec["n_le_rtol"]) == (2, 3, 3)
    d = [0.0, 0.0, 0.5, 2 ** -21, 2 ** -7]
    b = [1.0, 2.0, 3.0, 4.0, -1.0]
    assert math.isclose(rec["ss_delta"], sum(x * x for x in d), rel_tol=1e-12)
    assert math.isclose(rec["rel_delta"], math.sqrt(sum(x * x for x in d)) / math.sqrt(sum(x * x for x in b)),
                        rel_tol=1e-12)
    assert rec["delta_max"] == 0.5
    assert math.isclose(rec["cos_delta_base"], ew.cos_delta_base(w0, w1), rel_tol=1e-12)
    assert (rec["layer"], rec["component"]) == (0, "mlp")


def test_dtypes_and_blocks_follow_the_scan():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(1000, generator=g)
    w1 = w0 + torch.randn(1000, generator=g) * 1e-3 * (torch.rand(1000, generator=g) < 0.5)
    opts = DiffOptions(block_elems=300, atol=1e-4)
    blocks = memory.block_sums(w0, w1, opts)
    assert len(blocks) == 4  # blocks of 300: the scan's boundaries
    for a, b in ((w0.bfloat16(), w1.bfloat16()), (w0.double(), w1.double()), (w0.half(), w1.half()),
                 (w0.bfloat16(), w1)):
        s = ew.Sums()
        for t in memory.block_sums(a, b, opts):
            s.add(t)
        ref = ew.Sums()
        ref.add(ew.partial_sums(a, b, opts.atol, opts.eta))  # the torch reference of the kernel
        assert (s.used, s.eq, s.le_atol, s.le_rtol) == (ref.used, ref.eq, ref.le_atol, ref.le_rtol)
        assert math.isclose(s.ss_d, ref.ss_d, rel_tol=1e-7) and math.isclose(s.dot, ref.dot, rel_tol=1e-6)
