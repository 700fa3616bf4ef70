"""Evaluations written by the trainer (`eval.json` in a run folder), read for reports.

Format: {"method", "task", "seed", "save_dtype", "weight_decay", "base": PATH, "base_fingerprint": STR,
         "before": {"target_id": a, "target_ood": a, "knowledge": a, "retention": a},
         "after": {same keys}}  with accuracies in [0, 1].
Gains are `after - before` per split. Fields other than before/after are optional.

`base` and `base_fingerprint` name the checkpoint the run started from (its absolute path and
`Checkpoint.identity()["fingerprint"]`). `check_bases` compares them with the base the run is measured
from in a compare (its run-base, else the common base; docs/inputs.md, Per-run bases): on the
fingerprint; without one, on the path, with a warning; without either, a warning that the file carries
no identity. A mismatch is an `EvaluationError` unless `mismatch="warn"`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from updelta.errors import EvaluationError, UpdeltaError

KNOWN = {"method", "task", "seed", "save_dtype", "weight_decay", "base", "base_fingerprint", "before", "after"}
SPLITS = ("target_id", "target_ood", "knowledge", "retention")
SPLIT_LABELS = {"target_id": "target (in-dist.)", "target_ood": "target (OOD)", "knowledge": "knowledge",
                "retention": "retention"}


@dataclass
class Evaluation:
    """One run's evaluation: accuracies before and after training, per split, and its training facts."""

    path: str
    before: dict[str, float]
    after: dict[str, float]
    method: str | None = None
    task: str | None = None
    seed: int | None = None
    save_dtype: str | None = None
    weight_decay: float | None = None
    base: str | None = None
    base_fingerprint: str | None = None  # Checkpoint.identity()["fingerprint"] of the checkpoint the run started from
    extra: dict = field(default_factory=dict)

    @property
    def splits(self) -> list[str]:
        """Splits present before and after, the trainer's splits first."""
        both = [k for k in self.after if k in self.before]
        return [k for k in SPLITS if k in both] + [k for k in both if k not in SPLITS]

    @property
    def gains(self) -> dict[str, float]:
        return {k: self.after[k] - self.before[k] for k in self.splits}

    def as_dict(self) -> dict:
        return {"path": self.path, "method": self.method, "task": self.task, "seed": self.seed,
                "save_dtype": self.save_dtype, "weight_decay": self.weight_decay, "base": self.base,
                "base_fingerprint": self.base_fingerprint, "before": self.before, "after": self.after, "gains": self.gains}


def _accs(d, key: str, path) -> dict[str, float]:
    if not isinstance(d, dict) or not d:
        raise UpdeltaError(f"{path}: '{key}' must be an object of accuracies per split, e.g. "
                           f'{{"target_id": 0.41, "retention": 0.88}}')
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise UpdeltaError(f"{path}: {key}.{k} = {v!r}; accuracies must be numbers in [0, 1]")
        out[str(k)] = float(v)
    return out


def _str(v, key: str, where) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, os.PathLike):
        return str(v)
    if not isinstance(v, str):
        raise UpdeltaError(f"{where}: '{key}' = {v!r}; expected a string (the trainer's eval.json)")
    return v


def load_eval(path: str | os.PathLike) -> Evaluation:
    """Read one `eval.json` (a file, or a run folder holding `eval.json`)."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UpdeltaError(f"{p}: no such evaluation file; pass --eval NAME=FILE.json (the trainer's eval.json)") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UpdeltaError(f"{p}: not a readable JSON evaluation ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(d, dict) or "before" not in d or "after" not in d:
        raise UpdeltaError(f"{p}: an evaluation needs 'before' and 'after' objects (the trainer's eval.json)")
    before, after = _accs(d["before"], "before", p), _accs(d["after"], "after", p)
    if not any(k in before for k in after):
        raise UpdeltaError(f"{p}: 'before' and 'after' share no split; cannot compute gains")
    wd = d.get("weight_decay")
    return Evaluation(path=str(p), before=before, after=after, method=d.get("method"), task=d.get("task"),
                      seed=d.get("seed"), save_dtype=d.get("save_dtype"),
                      weight_decay=float(wd) if isinstance(wd, (int, float)) and not isinstance(wd, bool) else None,
                      base=_str(d.get("base"), "base", p), base_fingerprint=_str(d.get("base_fingerprint"),
                                                                                 "base_fingerprint", p),
                      extra={k: v for k, v in d.items() if k not in KNOWN})


def parse_eval_specs(specs) -> dict[str, Evaluation]:
    """`NAME=FILE.json` arguments -> {name: Evaluation} (files read now, so errors come before any work)."""
    out: dict[str, Evaluation] = {}
    for s in specs or ():
        name, sep, path = str(s).partition("=")
        if not sep or not name or not path:
            raise UpdeltaError(f"--eval {s!r}: expected NAME=FILE.json (NAME is a run name)")
        if name in out:
            raise UpdeltaError(f"--eval: run {name!r} given twice")
        out[name] = load_eval(path)
    return out


def load_evals(evals) -> dict[str, Evaluation]:
    """Accept {name: Evaluation | path | dict} and return {name: Evaluation}."""
    out = {}
    for name, e in (evals or {}).items():
        if isinstance(e, Evaluation):
            out[name] = e
        elif isinstance(e, dict):
            out[name] = Evaluation(path="(dict)", before=_accs(e.get("before"), "before", name),
                                   after=_accs(e.get("after"), "after", name), method=e.get("method"),
                                   task=e.get("task"), seed=e.get("seed"), save_dtype=e.get("save_dtype"),
                                   weight_decay=e.get("weight_decay"), base=_str(e.get("base"), "base", name),
                                   base_fingerprint=_str(e.get("base_fingerprint"), "base_fingerprint", name),
                                   extra={k: v for k, v in e.items() if k not in KNOWN})
        else:
            out[name] = load_eval(e)
    return out


def check_names(evals: dict[str, Evaluation], runs: list[str]) -> None:
    bad = [n for n in evals if n not in runs]
    if bad:
        raise UpdeltaError(f"--eval {', '.join(bad)}: no run of that name (runs: {', '.join(runs)})")


def _same_path(a: str, b: str) -> bool:
    """Whether two checkpoint paths name the same checkpoint: equal once resolved, or a weights file and the folder
    it lies in."""
    pa, pb = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return pa == pb or (pb.parent == pa and pb.is_file()) or (pa.parent == pb and pa.is_file())


def check_bases(evals: dict[str, Evaluation], bases: dict, mismatch: str = "error") -> list[str]:
    """Check each evaluation's base against the base its run is measured from (`bases`: {run: identity dict or
    `meta.Identity`}); the warnings, one line each. A mismatch raises `EvaluationError` (one line: the file, both
    bases and the fixes) unless `mismatch == "warn"`, when it is one of the warnings."""
    out: list[str] = []
    for run, e in evals.items():
        ident = bases.get(run)
        if ident is None:
            continue
        ident = ident if isinstance(ident, dict) else ident.to_dict()
        cpath, cfp = ident.get("path"), ident.get("fingerprint")
        if e.base_fingerprint:
            if cfp is None or e.base_fingerprint == cfp:
                if cfp is None:
                    out.append(f"{e.path}: run {run}'s compared base {cpath} has no fingerprint recorded; its "
                               f"evaluation's base (fingerprint {e.base_fingerprint}) was not checked")
                continue
            how = f"fingerprint {e.base_fingerprint}"
        elif e.base:
            if cpath is not None and _same_path(e.base, cpath):
                out.append(f"{e.path}: no base_fingerprint; run {run}'s evaluation base was matched on its path "
                           f"{e.base} only (an eval.json of an older trainer)")
                continue
            how = "no base_fingerprint: compared by path"
        else:
            out.append(f"{e.path}: an old eval.json carries no identity of its base (no base, no base_fingerprint); "
                       f"not checked that run {run} is compared against the base it was trained from")
            continue
        msg = (f"{e.path}: run {run} was trained from base {e.base or '(path not recorded)'} ({how}) but is compared "
               f"against {cpath} (fingerprint {cfp}); pass --run-base {run}={e.base or 'ITS_BASE'} to measure it "
               f"from its own base, or --eval-base-mismatch warn")
        if mismatch != "warn":
            raise EvaluationError(msg)
        out.append(msg)
    return out
