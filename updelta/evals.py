"""Evaluations written by the trainer (`eval.json` in a run folder), read for reports.

Format: {"method", "task", "seed", "save_dtype", "weight_decay", "base": PATH,
         "before": {"target_id": a, "target_ood": a, "knowledge": a, "retention": a},
         "after": {same keys}}  with accuracies in [0, 1].
Gains are `after - before` per split. Fields other than before/after are optional.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UpdeltaError

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
                "before": self.before, "after": self.after, "gains": self.gains}


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
    known = {"method", "task", "seed", "save_dtype", "weight_decay", "base", "before", "after"}
    return Evaluation(path=str(p), before=before, after=after, method=d.get("method"), task=d.get("task"),
                      seed=d.get("seed"), save_dtype=d.get("save_dtype"),
                      weight_decay=float(wd) if isinstance(wd, (int, float)) and not isinstance(wd, bool) else None,
                      base=d.get("base"), extra={k: v for k, v in d.items() if k not in known})


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
                                   weight_decay=e.get("weight_decay"), base=e.get("base"))
        else:
            out[name] = load_eval(e)
    return out


def check_names(evals: dict[str, Evaluation], runs: list[str]) -> None:
    bad = [n for n in evals if n not in runs]
    if bad:
        raise UpdeltaError(f"--eval {', '.join(bad)}: no run of that name (runs: {', '.join(runs)})")
