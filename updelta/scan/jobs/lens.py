"""The logit lens of the update (docs/metrics.md, "Logit lens of the update"): the hooks the scan calls.

- `setup(base, family, opts) -> (LensSpec | None, note)`: from the family's `lens` data (updelta/families/*.json:
  the output-side `modules`, the `final_norm` tensor, `norm_offset` per config.json model_type) and the base
  checkpoint's tensors: where the unembedding (the head, or the embedding it is tied to) and the final norm
  weight are, as plain data (`TensorLocation`); None with a note when the family declares no lens, a tensor is
  missing, or `lens_k` is 0;
- `wants(tensor, spec)`: whether a spectral job computes the tensor's top directions (an output-side module of a
  text layer whose output size is the unembedding's hidden size);
- `dense(job, cols, d)` / `factored(job, cols, tensor, loc)`: called by `scan.jobs.spectral.run_spectral_job`, they put the
  update's top-`lens_k` `metrics.lens.Directions` into the run's spectral columns under `KEY` (popped by the
  engine, never a column);
- `run_lens_job(LensJob) -> rows`: every direction of the scan pushed through the final-norm gain and the
  unembedding in one streamed pass over W_U (row blocks, float32 on the job's device; no float32 copy of W_U),
  the candidates rescored exactly (float64) from their rows: the `Result.lens` rows;
- token text: filled by the engine with `io.tokenizer.fill_token_text` (the base's tokenizer.json, when present).
"""
from __future__ import annotations

import numpy as np
import torch

from updelta.errors import UpdeltaError
from updelta.families.heads import text_config
from updelta.families.naming import canonical, family as family_of
from updelta.io.locations import TensorLocation
from updelta.io.readers import open_reader
from updelta.metrics import lens as ml
from updelta.scan.jobs.factored import Update
from updelta.scan.jobs.read import raw_to_torch, use_threads
from updelta.scan.plan import Entry, LensJob, LensSpec, wants  # noqa: F401 (wants: re-exported)

KEY = "_lens"  # the spectral columns' key of a run's Directions (not a column)
TABLE = "lens"


def family_lens(family: str) -> dict | None:
    """The family's `lens` object ({"modules": [...], "final_norm": name or null, "norm_offset": {...}}), read
    through `naming.family` (the one loader of the family data)."""
    try:
        d = family_of(family).lens
    except UpdeltaError:
        return None
    return d if isinstance(d, dict) and d.get("modules") else None


def setup(base, family: str, opts) -> tuple[LensSpec | None, dict]:
    """The lens of a scan of checkpoint `base` (an `io.Checkpoint`) of family `family`, or None and why."""

    if opts.spectral == "off" or int(opts.lens_k) == 0:
        return None, {"skipped": "--spectral off" if opts.spectral == "off" else "--lens-k 0"}
    data = family_lens(family)
    if data is None:
        return None, {"skipped": f"family {family!r} declares no lens modules"}
    names = {canonical(n): n for n in base.tensors}
    head = tied = None
    for h, e in family_of(family).tied:
        if h in names:
            head, tied = names[h], False
            break
        if e in names:
            head, tied = names[e], True
            break
    if head is None:
        return None, {"skipped": "the base has no output head or embedding the family names"}
    href = base.tensors[head]
    if len(href.shape) != 2 or not href.is_float:
        return None, {"skipped": f"{head}: shape {list(href.shape)} {href.dtype} is not a float [vocab, hidden]"}
    norm, nname = None, data.get("final_norm")
    if nname:
        if nname not in names:
            return None, {"skipped": f"the base has no final norm {nname!r} (family data)"}
        nref = base.tensors[names[nname]]
        if tuple(nref.shape) != (href.shape[1],):
            return None, {"skipped": f"{names[nname]}: shape {list(nref.shape)} is not [{href.shape[1]}]"}
        norm, nname = nref.location, names[nname]
    cfg = base.config or {}
    types = {cfg.get("model_type"), text_config(cfg).get("model_type")}
    offsets = data.get("norm_offset") or {}
    offset = next((float(offsets[t]) for t in types if t in offsets), 0.0)
    spec = LensSpec(href.location, head, bool(tied), norm, nname, offset, tuple(data["modules"]), int(opts.lens_k))
    return spec, {"head": head, "tied": bool(tied), "final_norm": nname, "norm_offset": offset,
                  "modules": list(spec.modules), "k": spec.k}


def dense(job, cols: dict, d: torch.Tensor) -> None:
    """The top directions of the dense update d ([out, in]) into `cols` when the job wants them."""
    if getattr(job, "lens", False):
        cols[KEY] = ml.top_directions(d, int(job.opts.lens_k))


def factored(job, cols: dict, t, loc) -> None:
    """An adapter side's top directions from its factors (plain LoRA, no merge dtype: exact); DoRA, merged-dtype and
    vector updates get none (no lens rows)."""
    if not getattr(job, "lens", False):
        return

    if loc.magnitude is not None or job.opts.merge_dtype != "off":
        return
    u = Update(loc, torch.device(job.device))
    m = t.shape[1] if t.transposed else t.shape[0]
    if u.zero:
        cols[KEY] = ml.Directions.empty(int(m))
        return
    if u.vec is not None:
        return
    L, R = u.lr()  # stored D = s L R
    if t.transposed:
        L, R = R.T, L.T
    cols[KEY] = ml.factored_directions(L, R, u.s, int(job.opts.lens_k))


def entries(plan, by_key: dict) -> tuple[Entry, ...]:
    """The directions popped from the spectral columns ({(run, tensor name): Directions}), in plan order."""
    out = []
    for t in plan.tensors:
        for s in t.sides:
            d = by_key.get((s.run, t.name))
            if d is not None and d.sigma.size:
                out.append(Entry(s.run, t.name, t.info.layer, t.info.module, d))
    return tuple(out)


def _rows_f64(reader, loc: TensorLocation, ids: np.ndarray, hidden: int) -> np.ndarray:

    out = np.empty((ids.size, hidden))
    for j, i in enumerate(ids):
        out[j] = raw_to_torch(reader.read(int(i) * hidden, hidden), loc.dtype).double().numpy()
    return out


def run_lens_job(job: LensJob) -> list[dict]:
    """The `Result.lens` rows of every entry: per direction, the TOP promoted and TOP suppressed tokens."""

    use_threads(job.threads)
    spec, dev = job.spec, torch.device(job.device)
    vocab, hidden = (int(x) for x in spec.head.shape)
    owners = [(e, j) for e in job.entries for j in range(e.dirs.sigma.size)]
    if not owners:
        return []
    nvec = None
    if spec.norm is not None:
        nvec = raw_to_torch(open_reader(spec.norm).read(0, hidden), spec.norm.dtype).double().numpy()
    gain = ml.gains(nvec, spec.offset, hidden)
    G = np.concatenate([ml.scaled(e.dirs, gain) for e in job.entries], axis=1)  # [hidden, C] float64
    g32 = torch.from_numpy(G).to(device=dev, dtype=torch.float32)
    cand = ml.Candidates(G.shape[1], ml.CANDIDATES * ml.TOP)
    reader = open_reader(spec.head)
    step = ml.block_rows(hidden)
    rowsum = torch.zeros(hidden, dtype=torch.float64, device=dev)  # for the mean score over the vocabulary
    for r0 in range(0, vocab, step):
        r1 = min(vocab, r0 + step)
        w = raw_to_torch(reader.read(r0 * hidden, (r1 - r0) * hidden), spec.head.dtype).to(dev)
        w = w.reshape(r1 - r0, hidden).float()
        cand.add(w @ g32, r0)
        rowsum += w.sum(dim=0, dtype=torch.float64)
        del w
    mean = (rowsum.cpu().numpy() / vocab) @ G  # [C]: mean_j z_j per direction, before the sign
    ids = cand.rows()
    uniq = np.unique(np.concatenate(ids))
    exact = _rows_f64(reader, spec.head, uniq, hidden)
    pos = {int(i): p for p, i in enumerate(uniq)}
    rows = []
    for c, (e, j) in enumerate(owners):
        z = exact[[pos[int(i)] for i in ids[c]]] @ G[:, c]
        flip, picked = ml.finish(ids[c], z)
        for sign, rank, tok, score in picked:
            rows.append({"run": e.run, "layer": e.layer, "module": e.module, "name": e.name, "direction": j,
                         "sigma": float(e.dirs.sigma[j]), "resid": float(e.dirs.resid[j]), "sign": sign,
                         "rank": rank, "token_id": tok, "token": None, "score": score,
                         "score_mean": float(flip * mean[c])})
    return rows
