"""Per-tensor work for runs given as factors (PEFT adapters, `adapters.FactoredLocation`; docs/adapters.md).

The plan (`plan.make_plan`) gives every tensor that some adapter run updates by factors one `FactoredJob`: the
adapter sides of that tensor and every run pair with an adapter side. Dense sides of the same tensor stay in the
cheap jobs. A job streams W0 by row blocks once and, per block, folds each update in:

- without `merge_dtype`: D = s L[rows] R in float64 (stored orientation; L = B, R = A, or A^T, B^T when transposed),
  exact. ||D||_F^2 comes from the factors (s^2 sum((L^T L) * (R R^T))), <D, W0>, sum |D| and max |D| from the
  blocks. Sparsity counts are null: D is never stored, so "unchanged" has no storage meaning. DoRA:
  W1 = m (W0 + D) / ||W0 + D|| per output row (a first pass finds the norms), D = W1 - W0 dense, by blocks.
- with `merge_dtype`: W1 = W0 + D as a merged checkpoint would store it (D = (L R) * s in float32, cast to the
  merge dtype, added to W0 in the merge dtype; DoRA: the float64 W1 rounded to the merge dtype), and every cheap
  column, sparsity included, is the dense fused pass of W0 against those values (`metrics.elementwise`).

Pairs: two plain LoRA updates (no merge dtype): <D_a, D_b> = s_a s_b sum((L_a^T L_b) * (R_a R_b^T)) from the
factors; otherwise the two updates are streamed side by side. Spectral columns: `spectral_side` (called from
`scan.jobs.spectral.run_spectral_job`).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from updelta.io.locations import FactoredLocation, TensorLocation, is_factored
from updelta.io.readers import open_reader
from updelta.metrics import elementwise as ew, factored as fm, pairwise as pw
from updelta.metrics.schema import BlockSums, PairBlockSums
from updelta.options import DiffOptions
from updelta.scan.jobs.cheap import TensorRecords, changed, pair_ids, tensor_ids
from updelta.scan.jobs.read import load, materialize, raw_to_torch, use_threads
from updelta.scan.plan import FactoredJob, TensorSpec

MERGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
NULL_COUNTS = ("n_eq", "n_le_atol", "n_le_rtol", "sparsity_exact", "sparsity_atol", "sparsity_rtol")


# ---- reading ----------------------------------------------------------------------------------------------
class _Rows:
    """Row blocks of one stored tensor (1-D: one block), as torch tensors in the storage dtype."""

    def __init__(self, loc: TensorLocation, dev: torch.device):
        self.loc, self.dev, self.reader = loc, dev, open_reader(loc)
        self.cols = loc.shape[-1] if len(loc.shape) >= 2 else 1

    def read(self, r0: int, r1: int) -> torch.Tensor:

        raw = self.reader.read(r0 * self.cols, (r1 - r0) * self.cols)
        x = raw_to_torch(raw.copy(), self.loc.dtype).to(self.dev)
        return x.reshape(r1 - r0, self.cols) if len(self.loc.shape) >= 2 else x


class Update:
    """A factored update opened on one device: its row blocks of D (float64, stored orientation) or of merged W1."""

    def __init__(self, loc: FactoredLocation, dev: torch.device):
        self.loc, self.dev = loc, dev
        self.s = float(loc.scale)
        self.vec = self.b = self.a = self.mag = None
        self.norms: torch.Tensor | None = None
        self.zero = loc.kind == "zero"  # a base tensor the adapter does not touch: D = 0, nothing to load
        if self.zero:
            return
        b = load(loc.b, dev)
        if loc.a is None:
            self.vec = b
        else:
            self.b, self.a = b, load(loc.a, dev)
        self.mag = load(loc.magnitude, dev) if loc.magnitude is not None else None

    # D = s * (B @ A) (transposed when stored so), the product taken as PEFT takes it
    def product(self, r0: int, r1: int, dtype=torch.float64) -> torch.Tensor:
        if self.vec is not None:
            return self.vec[r0:r1].to(dtype) * self.s
        b, a = self.b.to(dtype), self.a.to(dtype)
        if self.loc.transposed:
            return (b @ a[:, r0:r1]).T * self.s
        return (b[r0:r1] @ a) * self.s

    def lr(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with stored D = s L @ R."""
        return (self.a.T, self.b.T) if self.loc.transposed else (self.b, self.a)

    def fro2(self) -> float:
        if self.zero:
            return 0.0
        if self.vec is not None:
            return self.s * self.s * float((self.vec * self.vec).sum())
        L, R = self.lr()
        return fm.factored_fro(L, R, self.s) ** 2

    def prepare(self, w0rows: _Rows, rows: int, step: int) -> None:
        """DoRA: the norm of each output row of W0 + D (stored columns when transposed), one pass over W0."""
        if self.mag is None:
            return
        acc = None
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            v = w0rows.read(r0, r1).double() + self.product(r0, r1)
            sq = (v * v).sum(dim=0 if self.loc.transposed else 1)
            if self.loc.transposed:
                acc = sq if acc is None else acc + sq
            else:
                acc = sq if acc is None else torch.cat([acc, sq])
        self.norms = acc.sqrt()

    def w1_exact(self, w0: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """W1 rows in float64 (w0: the stored W0 rows, widened)."""
        v = w0 + self.product(r0, r1)
        if self.mag is None:
            return v
        if self.loc.transposed:
            return v * (self.mag / self.norms)[None, :]
        return v * (self.mag[r0:r1] / self.norms[r0:r1])[:, None]

    def delta(self, w0: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """D rows in float64, exact (w0: W0 rows in float64)."""
        if self.mag is None:
            return self.product(r0, r1)
        return self.w1_exact(w0, r0, r1) - w0

    def merged(self, w0_native: torch.Tensor, r0: int, r1: int, md: torch.dtype) -> torch.Tensor:
        """W1 rows as a checkpoint merged in `md` stores them."""
        if self.mag is not None:
            return self.w1_exact(w0_native.double(), r0, r1).to(md)
        d = self.product(r0, r1, torch.float32).to(md)
        return w0_native.to(md) + d


def _spans(rows: int, cols: int, block: int):
    step = max(1, block // max(cols, 1))
    return step, [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


# ---- the job ----------------------------------------------------------------------------------------------
def _exact_sums(w0: torch.Tensor, d: torch.Tensor, hist) -> BlockSums:
    """The `Sums.add` record of one block from W0 and the exact D (float64); counts are 0 (null later)."""
    w0, d = w0.reshape(-1), d.reshape(-1)
    ad = d.abs()
    quick = (float(torch.dot(d, d)), float(torch.dot(w0, w0)), float(torch.dot(d, w0)), float(ad.sum()))
    if all(math.isfinite(x) for x in quick):  # every element finite (a NaN/Inf would reach the sums)
        if hist is not None:
            ew._histogram(ad.float(), hist)
        ss_d, ss_base, dot, sum_abs = quick
        return BlockSums(used=d.numel(), nonfinite_base=0, nonfinite_ft=0, ss_d=ss_d, ss_base=ss_base, dot=dot,
                         sum_abs=sum_abs, max_abs=float(ad.max()) if ad.numel() else 0.0, eq=0, le_atol=0, le_rtol=0)
    f0 = torch.isfinite(w0)
    w1 = w0 + d
    f1 = torch.isfinite(w1) & torch.isfinite(d)
    m = f0 & f1
    z = torch.zeros((), dtype=torch.float64, device=w0.device)
    w0m, dm = torch.where(m, w0, z), torch.where(m, d, z)
    ad = dm.abs()
    if hist is not None:
        ew._histogram(ad[m].float(), hist)
    return BlockSums(used=int(m.sum()), nonfinite_base=int((~f0).sum()), nonfinite_ft=int((~f1).sum()),
                     ss_d=float((dm * dm).sum()), ss_base=float((w0m * w0m).sum()), dot=float((dm * w0m).sum()),
                     sum_abs=float(ad.sum()), max_abs=float(ad.max()) if ad.numel() else 0.0, eq=0, le_atol=0,
                     le_rtol=0)


def _common(t: TensorSpec) -> dict:
    return tensor_ids(t)


def run_factored_job(job: FactoredJob):
    """TensorRecords (records of the adapter runs, records of their pairs) of one tensor."""

    use_threads(job.threads)
    t, opts, dev = job.tensor, job.opts, torch.device(job.device)
    md = MERGE_DTYPES.get(opts.merge_dtype)
    sides = {s.run: s for s in t.sides}
    need = set(job.runs) | {r for p in job.pairs for r in p}
    ups = {r: Update(sides[r].loc, dev) for r in need if is_factored(sides[r].loc)}
    dense = {r: _Rows(sides[r].loc, dev) for r in need if r not in ups}
    w0rows = _Rows(t.base, dev)
    rows = t.shape[0] if len(t.shape) >= 1 else 1
    cols = w0rows.cols
    step, spans = _spans(rows, cols, job.block)
    for u in ups.values():
        u.prepare(w0rows, rows, step)
    # which sides give stored values (exact mask counts) rather than an exact float64 D
    zero = {r for r, u in ups.items() if u.zero}
    valued = {r: (md is not None) or (r in dense) or (r in zero) for r in need}
    sums = {r: ew.Sums() for r in need}
    hists = {r: torch.zeros(ew.HIST_BINS, dtype=torch.int64, device=dev) for r in job.runs} if opts.histogram else {}
    streamed = [p for p in job.pairs if not _factor_pair(p, ups, md)]
    psums = {p: pw.PairSums() for p in job.pairs}
    for r0, r1 in spans:
        w0n = w0rows.read(r0, r1)
        w0 = w0n.double()
        vals, deltas = {}, {}
        for r in need:
            if r in dense:
                vals[r] = dense[r].read(r0, r1)
            elif r in zero:
                vals[r] = w0n
            elif md is not None:
                vals[r] = ups[r].merged(w0n, r0, r1, md)
            else:
                deltas[r] = ups[r].delta(w0, r0, r1)
        for r in need:
            h = hists.get(r)
            if valued[r]:
                sums[r].add(ew.partial_sums(w0n, vals[r], opts.atol, opts.eta, h))
            else:
                sums[r].add(_exact_sums(w0, deltas[r], h))
        for p in streamed:
            ra, rb = p
            if valued[ra] and valued[rb]:
                psums[p].add(pw.pair_partial_sums(w0n, vals[ra], vals[rb], opts.atol, opts.eta))
            else:
                da = deltas[ra] if ra in deltas else vals[ra].double() - w0
                db = deltas[rb] if rb in deltas else vals[rb].double() - w0
                m = torch.isfinite(da) & torch.isfinite(db)
                da, db = da[m], db[m]
                psums[p].add(PairBlockSums(used=int(m.sum()), dot=float((da * db).sum()), ss_a=float((da * da).sum()),
                                           ss_b=float((db * db).sum()), both_exact=0, both_atol=0, both_rtol=0,
                                           sign_agree=0))
    # plain LoRA without a merge dtype: the norm from the factors (exact); D was not needed in full
    for r, u in ups.items():
        s = sums[r]
        if md is None and u.mag is None and not u.zero and not (s.nonfinite_base or s.nonfinite_ft):
            s.ss_d = u.fro2()
    recs, nonfinite = [], []
    common = _common(t)
    for r in job.runs:
        side, s = sides[r], sums[r]
        row = ew.finalize(s)
        if not valued[r]:
            row.update(dict.fromkeys(NULL_COUNTS))
        folded = md is not None and r not in zero
        rec = {"run": r, **common, "dtype_ft": opts.merge_dtype if folded else side.loc.dtype,
               "resized": False, "added_rows": 0, "added_fro": 0.0, "tied": bool(side.tied or t.base_tied), **row}
        if r in hists:
            rec["hist"] = hists[r].cpu().numpy().tolist()
        if s.nonfinite_base or s.nonfinite_ft:
            nonfinite.append(f"{t.name} ({r}: base {s.nonfinite_base}, ft {s.nonfinite_ft})")
        recs.append(rec)
    precs = []
    for p in job.pairs:
        ra, rb = p
        ps = psums[p]
        if p not in streamed:
            ua, ub = ups[ra], ups[rb]
            ps.add(PairBlockSums(used=t.numel, dot=_factor_dot(ua, ub), ss_a=sums[ra].ss_d, ss_b=sums[rb].ss_d,
                                 both_exact=0, both_atol=0, both_rtol=0, sign_agree=0))
        precs.append(_pair_record(t, p, ps, sums, valued[ra] and valued[rb]))
    return TensorRecords(recs, precs, nonfinite)


def _factor_pair(p, ups: dict, md) -> bool:
    """Both sides plain factored updates (no DoRA) and no merge dtype: the pair comes from the factors."""
    return md is None and all(r in ups and ups[r].mag is None and not ups[r].zero for r in p)


def _factor_dot(ua: Update, ub: Update) -> float:
    if ua.vec is not None:
        return ua.s * ub.s * float((ua.vec * ub.vec).sum())
    (la, ra), (lb, rb) = ua.lr(), ub.lr()
    return fm.factored_inner(la, ra, ua.s, lb, rb, ub.s)


def _pair_record(t: TensorSpec, p, ps: pw.PairSums, sums: dict, counted: bool) -> dict:

    ra, rb = p
    head = pair_ids(t, ra, rb)
    if counted:
        ca, cb = changed(sums[ra]), changed(sums[rb])
        n = max(ps.used, 1)
        exp = {c: ca[c] * cb[c] / n for c in pw.CONVS}
        return {**head, **pw.finalize_pair(ps, ca, cb, exp, ps.used)}
    row = pw.finalize_pair(ps, {c: 0 for c in pw.CONVS}, {c: 0 for c in pw.CONVS}, {c: 0.0 for c in pw.CONVS},
                           ps.used)
    for k in list(row):  # mask overlaps and sign agreement need stored values: null
        if k not in ("delta_cos", "dot", "delta_fro_a", "delta_fro_b", "ss_delta_a", "ss_delta_b", "n_compared"):
            row[k] = None
    return {**head, **row}


def sort_records(specs, records: list[dict], pair_records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Records in plan order (tensor, then run / pair order), as a scan without adapter runs gives them."""
    tpos = {t.name: t.index for t in specs}
    rpos = {t.index: {s.run: i for i, s in enumerate(t.sides)} for t in specs}
    ppos = {t.index: {p: i for i, p in enumerate(t.pairs)} for t in specs}

    def rk(r):
        i = tpos[r["name"]]
        return i, rpos[i].get(r["run"], 0)

    def pk(r):
        i = tpos[r["name"]]
        return i, ppos[i].get((r["run_a"], r["run_b"]), 0)

    return sorted(records, key=rk), sorted(pair_records, key=pk)


# ---- spectral ---------------------------------------------------------------------------------------------
def _oriented(x: torch.Tensor, transposed: bool) -> torch.Tensor:
    return x.transpose(-1, -2).contiguous() if transposed else x


def dense_w1(u: Update, base: TensorLocation, opts: DiffOptions, dtype: torch.dtype) -> torch.Tensor:
    """W1 of the whole tensor in the stored orientation, built by row blocks: merged values with a merge dtype,
    else W0 + D (DoRA: m (W0 + D) / ||W0 + D||) in float64 rounded to `dtype`."""
    md = MERGE_DTYPES.get(opts.merge_dtype)
    w0rows = _Rows(base, u.dev)
    rows, cols = base.shape[0], w0rows.cols
    step, spans = _spans(rows, cols, opts.block_elems)
    u.prepare(w0rows, rows, step)
    out = torch.empty(base.shape, dtype=dtype, device=u.dev)
    for r0, r1 in spans:
        w0n = w0rows.read(r0, r1)
        out[r0:r1] = (u.merged(w0n, r0, r1, md) if md is not None else u.w1_exact(w0n.double(), r0, r1)).to(dtype)
    return out


def spectral_only(job) -> dict[str, dict]:
    """`scan.jobs.spectral.run_spectral_job` for a tensor whose every side is an adapter's: W0 is materialised only when some side
    needs it (`full`, DoRA, a merge dtype), so plain LoRA and untouched tensors cost no dense copy in `fast`."""

    use_threads(job.threads)
    t, opts, dev = job.tensor, job.opts, torch.device(job.device)
    md = MERGE_DTYPES.get(opts.merge_dtype)
    need = opts.spectral == "full" or any(
        s.loc.magnitude is not None or (md is not None and s.loc.kind != "zero") for s in t.sides)
    w0 = None
    if need:
        w0 = _oriented(materialize(t.base, t.numel, t.shape, dev), t.transposed).contiguous()
    return {s.run: spectral_side(w0, t, s.loc, opts, dev) for s in t.sides}


def spectral_side(w0: torch.Tensor | None, t: TensorSpec, loc: FactoredLocation, opts: DiffOptions,
                  dev: torch.device | None = None) -> dict:
    """Spectral columns of one adapter side (w0: the base, materialised and oriented as `jobs` does; None when
    `spectral_only` found it unneeded).

    Plain LoRA without a merge dtype: the singular values of D from the factors (QR of L and R^T, SVD of the r x r
    core: exact), so `fast` needs nothing dense; `full` builds W1 = W0 + D once for the subspace columns and leaves
    `offprincipal_overlap` null (it needs stored values). DoRA, or any update with a merge dtype: W1 is built
    densely and measured as a dense run's. Untouched tensors: D = 0."""
    from updelta.metrics import spectral  # torch: loaded only on this path

    t0 = time.perf_counter()
    u = Update(loc, w0.device if w0 is not None else (dev or torch.device("cpu")))
    md = MERGE_DTYPES.get(opts.merge_dtype)
    shape = tuple(t.shape[::-1]) if t.transposed else tuple(t.shape)
    if u.zero:
        if w0 is not None:
            return spectral.spectral_columns(w0, w0, opts)
        out = spectral._fast_from_values(np.zeros(min(int(opts.topk), min(shape))), 0.0, int(opts.topk))
        out.update(topk_sv_err_est=0.0, spectral_s=time.perf_counter() - t0)
        return out
    fro2 = u.fro2() if u.mag is None else None
    wdt = torch.float64 if opts.spectral == "full" and opts.spectral_float64 else w0.dtype if w0 is not None \
        else torch.float32
    if md is not None or u.mag is not None or fro2 == 0.0:
        if w0 is None:
            w0 = _oriented(materialize(t.base, t.numel, t.shape, u.dev), t.transposed).contiguous()
        w1 = _oriented(dense_w1(u, t.base, opts, wdt), t.transposed)
        out = spectral.spectral_columns(w0, w1, opts)
        if md is None and opts.spectral == "full" and fro2 != 0.0:
            out["offprincipal_overlap"] = None
        return out
    L, R = u.lr()
    sv = fm.factored_singular_values(L, R, u.s)
    m, n = shape
    r = min(m, n)
    k = max(1, int(opts.topk))
    kk = min(k, r)
    vals = np.zeros(max(kk, sv.size))
    vals[:sv.size] = sv
    fro2 = float(np.sum(sv.astype(np.float64) ** 2))
    out = spectral._fast_from_values(vals[:kk], fro2, k)
    out["topk_sv_err_est"] = 0.0
    if opts.spectral == "full":
        w1 = _oriented(dense_w1(u, t.base, opts, wdt), t.transposed)
        full = spectral.spectral_columns(w0, w1, opts)
        del w1
        dt = torch.float64 if (opts.spectral_float64 or w0.dtype == torch.float64) else torch.float32
        allv = np.zeros(r)
        allv[:min(r, sv.size)] = sv[:r]
        full.update(out)
        full["rank_frac"] = spectral._numerical_rank(allv, (m, n), dt) / r
        full["erank"] = spectral._erank(allv)
        full["offprincipal_overlap"] = None
        out = full
    out["spectral_s"] = time.perf_counter() - t0
    return out
