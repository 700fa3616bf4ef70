"""The verdict rule of the zoo's claims, their records, thresholds and settings (docs/claims.md).

A claim is a record: what it says (`claim`), where it comes from (`source`), its measurable form with its size
(`threshold`, fixed here before any zoo runs, each size taken from the source's own figures and cited in
docs/claims.md), the numbers measured (`measured`), the training settings of the runs it compares (`settings`),
and its `verdict`:

- `reproduced`: the sign holds beyond noise (every seed's difference has the claimed sign and the mean difference
  exceeds twice its noise floor, at least `MIN_SEEDS` seeds) AND the size does (the claim's size test on the
  means over seeds); a claim whose source gives no size is reproduced on the sign alone and says so;
- `direction only`: the sign holds beyond noise, the size does not;
- `not reproduced`: the opposite sign holds beyond noise;
- `inconclusive`: anything else (fewer seeds, signs that disagree, a mean within the noise).

`kind` is `published` (the paper's claim) or `prediction` (updelta's own prediction from a mechanism a paper
names, e.g. the DFT paper's 1/p weighting, tested on the weights; never the paper's figure).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

MIN_SEEDS = 2
VERDICTS = ("reproduced", "direction only", "not reproduced", "inconclusive")
NO_SIZE = "no size published: reproduced on the sign beyond noise alone"

# Sizes, fixed before the zoo runs (docs/claims.md cites each one's figures).
DFT_GAIN_RATIO = 1.69  # Wu et al. Table 1: the smallest DFT/SFT ratio of gains over the base (LLaMA-3.2-3B)
NQ_GAP = 0.0648  # Wu et al., Natural Questions: SFT +5.38 points, DFT -1.10 points -> a gap of 6.48 points
ES_RATIO = (100.0, 10000.0)  # Abdi et al.: ES ||D||_F ~1000x GRPO's; within an order of magnitude of 1000
SPARSE_FACTOR, SPARSE_GAP = 2.0, 0.25  # Mukherjee et al.: RL 68.5-96% vs SFT 6-15% (the smallest gap 53.5 points)
PRECISION_SHARE = 0.5  # Zhu et al.: "raising the lr makes most apparent sparsity vanish" -> at least half of it
ORTHO_COS = 0.2  # metrics.md, Across runs: "near-orthogonal" taken as |cos| < 0.2 (no published figure)


@dataclass(frozen=True)
class Claim:
    """One claim, its verdict on this zoo, and the numbers, threshold and settings behind it."""

    claim: str  # what the literature (or updelta's prediction) says
    source: str
    verdict: str  # one of VERDICTS
    text: str  # the measured numbers beside the threshold, per seed and mean ± std
    threshold: str = ""  # the measurable form and its size (or NO_SIZE)
    measured: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # (method-task) -> the runs' training settings
    kind: str = "published"  # published | prediction

    def as_record(self) -> dict:
        return json_safe(asdict(self))


def json_safe(v):
    """JSON-safe: NaN and infinities as None, tuples as lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def sign_verdict(diffs: list[float], noise: float = 0.0) -> str:
    """`reproduced` / `not reproduced` / `inconclusive` on the sign of paired differences alone (claimed
    direction: positive): every seed agrees and |mean| > 2 max(standard error of the mean, noise)."""
    diffs = [d for d in diffs if not math.isnan(d)]
    if len(diffs) < MIN_SEEDS:
        return "inconclusive"
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    floor = 2 * max(se, noise)
    if all(d > 0 for d in diffs) and mean > floor:
        return "reproduced"
    if all(d < 0 for d in diffs) and -mean > floor:
        return "not reproduced"
    return "inconclusive"


def rule(diffs: list[float], noise: float = 0.0, size_ok: bool | None = None) -> str:
    """The verdict (module docstring): the sign test, then the size test (`size_ok`; None: the source gives no
    size, the sign decides)."""
    sign = sign_verdict(diffs, noise)
    if sign == "reproduced" and size_ok is False:
        return "direction only"
    return sign


def make(claim: str, source: str, diffs: list[float], text: str, threshold: str, *, noise: float = 0.0,
         size_ok: bool | None = None, measured: dict | None = None, settings: dict | None = None,
         kind: str = "published", verdict: str | None = None) -> Claim:
    """A `Claim` judged by `rule` (or given `verdict`), its text ending with the threshold."""
    v = verdict if verdict is not None else rule(diffs, noise, size_ok)
    m = {"diffs": list(diffs), "noise": noise, "size_holds": size_ok, **(measured or {})}
    return Claim(claim, source, v, f"{text}; threshold: {threshold}", threshold, m, settings or {}, kind)


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


# --- settings --------------------------------------------------------------------------------------------------------

def run_settings(e) -> dict:
    """One run's training settings from its eval.json (`Evaluation`): what tells a method's property from a
    budget's."""
    if e is None:
        return {}
    extra = e.extra if isinstance(e.extra, dict) else {}
    o = extra.get("options") or {}
    budget = o.get("steps", o.get("iterations"))
    return {k: v for k, v in {
        "lr": o.get("lr", o.get("alpha")), "lr_name": "alpha (ES step size)" if "alpha" in o and "lr" not in o else None,
        "sigma": o.get("sigma"), "population": o.get("population"), "steps": budget, "budget_unit": "iterations" if "iterations" in o else "steps",
        "batch_size": o.get("batch_size"), "save_dtype": e.save_dtype, "weight_decay": e.weight_decay,
        "eval_items": extra.get("eval_items") or o.get("eval_items"), "preset": extra.get("preset"),
        "start": extra.get("start"), "quick": o.get("quick")}.items() if v is not None}


def settings(evals: dict, groups: dict[str, list[str]]) -> dict:
    """{group label: settings of its runs (`run_settings` of the first run, plus its seeds and, when the runs
    differ, every run's)}; `groups`: label -> run names."""
    out = {}
    for label, runs in groups.items():
        have = [r for r in runs if evals.get(r) is not None]
        if not have:
            continue
        each = {r: run_settings(evals[r]) for r in have}
        first = each[have[0]]
        s = dict(first)
        s["seeds"] = [evals[r].seed for r in have]
        s["runs"] = have
        if any(x != first for x in each.values()):
            s["per_run"] = each
        out[label] = s
    return out


def settings_text(st: dict) -> str:
    """`sft-target: lr 0.0001, 100 steps, bfloat16, wd 0.01; ...; eval items 200/split; seeds 0, 1` (short)."""
    parts, items, seeds = [], set(), set()
    for label, s in st.items():
        bits = []
        if "lr" in s:
            bits.append(f"{'alpha' if 'lr_name' in s else 'lr'} {s['lr']:g}")
        if "sigma" in s:
            bits.append(f"sigma {s['sigma']:g}, population {s.get('population')}")
        if "steps" in s:
            bits.append(f"{s['steps']} {s.get('budget_unit', 'steps')}")
        if "save_dtype" in s:
            bits.append(str(s["save_dtype"]))
        if "weight_decay" in s:
            bits.append(f"wd {s['weight_decay']:g}")
        parts.append(f"{label}: {', '.join(bits) or 'settings unknown'}")
        ei = s.get("eval_items")
        if isinstance(ei, dict):
            items.update(f"{k} {v}" for k, v in ei.items())
        elif ei is not None:
            items.add(f"{ei}/split")
        seeds.update(x for x in s.get("seeds", []) if x is not None)
    tail = []
    if items:
        tail.append("eval items " + ", ".join(sorted(items)))
    if seeds:
        tail.append("seeds " + ", ".join(map(str, sorted(seeds))))
    return "; ".join(parts + tail)


# --- evaluation noise ---------------------------------------------------------------------------------------------

def eval_items(e, split: str, default: int = 200) -> int:
    """Items a run was evaluated on in `split` (eval.json `eval_items`, else `options.eval_items`)."""
    extra = e.extra if isinstance(getattr(e, "extra", None), dict) else {}
    n = extra.get("eval_items")
    if isinstance(n, dict):
        n = n.get(split)
    if not isinstance(n, (int, float)) or isinstance(n, bool) or not n:
        n = (extra.get("options") or {}).get("eval_items")
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n else default


def gain_se(e, split: str) -> float:
    """Standard error of a gain (after - before) on n items: sqrt((p0 (1 - p0) + p1 (1 - p1)) / n), the
    before and after accuracies treated as independent binomial estimates (an upper bound for paired items)."""
    if e is None or split not in e.before or split not in e.after:
        return math.nan
    n = eval_items(e, split)
    p0, p1 = e.before[split], e.after[split]
    return math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n)
