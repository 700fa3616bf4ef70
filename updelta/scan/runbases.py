"""Per-run bases: a run measured from a checkpoint of its own instead of the common base (docs/inputs.md, Per-run
bases).

RL started from an SFT checkpoint is measured from that checkpoint: `compare(base, runs, run_bases={"grpo": "sft/"})`
(`--run-base grpo=sft/`; a value that is a run name stands for that run's path). Everything here is pure (names,
identities and notes in, groups and notes out); the engine opens the checkpoints and runs one pairing and one plan
per distinct base (`engine.scan`).

Rules:
- runs share a base when their bases' identities (`Checkpoint.identity()`) are equal: the same path, files, sizes
  and fingerprint. A run-base equal to the common base joins the common group; a copy elsewhere does not;
- cross-run metrics (`Result.pairs`, `pairs_heads`, the pair aggregates) are computed only within a group; every
  other pair is listed in `meta["pairs_skipped"]` with the reason, and `Result.pairs_summary` has a row of nulls
  for it (`n_tensors` 0);
- `meta["run_bases"]` holds every run's base identity, and `Result.summary.base` its path.
"""
from __future__ import annotations

from pathlib import Path

from updelta.errors import UpdeltaError

BASE_LABEL = "base"  # who the common base is in the pairing notes


def resolve_run_bases(run_bases: dict[str, str] | None, runs: dict[str, str]) -> dict[str, str]:
    """{run: base path} checked against `runs`: an unknown run name is a one-line error; a value that names a run
    stands for that run's path (an existing path of that name that is another checkpoint is refused as ambiguous)."""
    out: dict[str, str] = {}
    for name, path in (run_bases or {}).items():
        name, path = str(name), str(path)
        if name not in runs:
            raise UpdeltaError(f"--run-base {name}={path}: no run named {name!r} (runs: {', '.join(runs)}); "
                               f"pass --run-base NAME=PATH with NAME one of the runs")
        if not path:
            raise UpdeltaError(f"--run-base {name}=: expected NAME=PATH (the checkpoint run {name} started from)")
        if path == name:
            raise UpdeltaError(f"--run-base {name}={path}: a run cannot be its own base")
        if path in runs:
            other = runs[path]
            if Path(path).exists() and Path(path).resolve() != Path(str(other)).resolve():
                raise UpdeltaError(f"--run-base {name}={path}: {path!r} is both a run name (path {other}) and "
                                   f"another path; pass the path you mean, e.g. --run-base {name}=./{path}")
            path = str(other)
        out[name] = path
    return out


def parse_run_bases(specs) -> dict[str, str]:
    """`NAME=PATH` arguments of `--run-base` -> {name: path}."""
    out: dict[str, str] = {}
    for s in specs or ():
        name, sep, path = str(s).partition("=")
        if not sep or not name or not path:
            raise UpdeltaError(f"--run-base {s!r}: expected NAME=PATH (NAME a run, PATH the checkpoint it started "
                               f"from)")
        if name in out:
            raise UpdeltaError(f"--run-base: run {name!r} given twice")
        out[name] = path
    return out


def groups(run_order: list[str], base_of: dict[str, int]) -> list[list[str]]:
    """Runs by base index (0 = the common base), in run order within a group; empty groups left out."""
    n = max(base_of.values(), default=0) + 1
    out = [[r for r in run_order if base_of[r] == i] for i in range(n)]
    return [g for g in out if g]


def split_pairs(pairs, base_of: dict[str, int], labels: dict[int, str]) -> tuple[list[tuple[str, str]], list[dict]]:
    """(pairs within one base, skipped pairs as {"run_a", "run_b", "why"}), each in the order given."""
    kept, skipped = [], []
    for a, b in pairs:
        if base_of[a] == base_of[b]:
            kept.append((a, b))
        else:
            skipped.append({"run_a": a, "run_b": b,
                            "why": f"different bases ({a} from {labels[base_of[a]]}, {b} from {labels[base_of[b]]})"})
    return kept, skipped


def merge_notes(notes: list[tuple[list[str], dict]]) -> dict:
    """The pairing notes of several groups (runs, notes) as one dict, as one pairing would have written them: lists
    joined (duplicates once), per-run dicts united, counts the largest, everything else the first group's. In a
    later group the key `base` (unindexed shards, de-quantized checkpoints) becomes `base of RUN, ...`."""
    if len(notes) == 1:
        return notes[0][1]
    out: dict = {}
    for i, (runs, d) in enumerate(notes):
        for k, v in d.items():
            if isinstance(v, dict) and i and k in ("unindexed", "dequantized"):
                v = {(f"{BASE_LABEL} of {', '.join(runs)}" if who == BASE_LABEL else who): x for who, x in v.items()}
            if k not in out:
                out[k] = list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
            elif isinstance(v, list) and isinstance(out[k], list):
                out[k] += [x for x in v if x not in out[k]]
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = {**v, **out[k]}
            elif isinstance(v, int) and not isinstance(v, bool) and isinstance(out[k], int):
                out[k] = max(out[k], v)
    return out
