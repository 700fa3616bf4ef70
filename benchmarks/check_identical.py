"""Bit-identical tables before and after a refactor (issues 24/25: the house by stage).

Recomputes, with whatever updelta is importable, (a) the demo zoo's compare (the demo's options: spectral full,
histograms) on the runs of an existing `updelta demo --out DIR` folder, with its report, and (b) SmolLM2-135M
against a short real fine-tune (`bench_peers.make_smollm2_pair`, spectral fast and full), and either saves the
tables or compares them by value with a saved copy. Uses the public API only (`updelta.compare/diff/load`,
`updelta.report.write_report`), so the same script runs on the code before and after a move.

    python benchmarks/check_identical.py save  SNAP --zoo DEMO_DIR [--smollm2]   # on the old commit
    python benchmarks/check_identical.py check SNAP --zoo DEMO_DIR [--smollm2]   # on the new one: exit 1 on a diff

Equal means: every table of every result (`Result.save` parquet files) equal element by element (NaN == NaN,
no tolerance; the wall-clock columns and the base path left out), and the report's Markdown and summary.json equal once
timings and paths are masked.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MASKS = [(re.compile(r"\d+(\.\d+)? ?s\b"), "<t>"), (re.compile(r"/[^\s)'\"]*/(updelta/assets/base|runs/[\w-]+)"),
                                                     r"<path>/\1")]


TIMINGS = ("spectral_s", "spectral_s_total")  # wall-clock columns: never equal run to run
PATHS = ("base",)  # the path a run was measured from: where the checkout lies


def _mask(text: str) -> str:
    for pat, rep in MASKS:
        text = pat.sub(rep, text)
    return re.sub(r" {2,}", " ", text)  # table padding follows the (masked) path lengths


def _zoo(demo: Path, out: Path) -> None:
    import updelta
    from updelta.report import write_report

    summary = json.loads((demo / "summary.json").read_text())
    base = Path(updelta.__file__).parent / "assets" / "base"
    runs = {n: demo / "runs" / n for n in summary["run_order"]}
    result = updelta.compare(base, runs, spectral="full", histogram=True, progress=False)
    result.save(out / "zoo")
    write_report(result, out / "zoo_report", evals={n: p / "eval.json" for n, p in runs.items()})


def _smollm2(out: Path) -> None:
    import updelta
    from bench_peers import DATA, make_smollm2_pair

    b, f = make_smollm2_pair(DATA / "smollm2")
    for mode in ("fast", "full"):
        updelta.diff(b, f, spectral=mode, progress=False).save(out / f"smollm2_{mode}")


def _drop_keys(obj, keys) -> None:
    """Remove `keys` from every dict nested in `obj` (timings in summary.json)."""
    if isinstance(obj, dict):
        for k in keys:
            obj.pop(k, None)
        for v in obj.values():
            _drop_keys(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            _drop_keys(v, keys)


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    tables = {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
    return {k: v.drop(columns=[c for c in TIMINGS + PATHS if c in v.columns]) for k, v in tables.items()}


def _compare_results(a: Path, b: Path) -> list[str]:
    bad = []
    ta, tb = _tables(a), _tables(b)
    if set(ta) != set(tb):
        bad.append(f"{a.name}: tables {sorted(set(ta) ^ set(tb))} in one only")
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True, check_dtype=True)
        except AssertionError as e:
            bad.append(f"{a.name}/{name}: {str(e).splitlines()[0:3]}")
    return bad


def _compare_text(a: Path, b: Path) -> list[str]:
    bad = []
    for rel in ("report.md", "summary.json"):
        x, y = _mask((a / rel).read_text()), _mask((b / rel).read_text())
        if rel == "summary.json":
            dx, dy = json.loads(x), json.loads(y)
            for d in (dx, dy):
                d.pop("updelta_version", None)
                _drop_keys(d, TIMINGS + ("seconds",))
            x, y = json.dumps(dx, sort_keys=True, indent=1), json.dumps(dy, sort_keys=True, indent=1)
        if x != y:
            xl, yl = x.splitlines(), y.splitlines()
            first = next((i for i, (p, q) in enumerate(zip(xl, yl)) if p != q), min(len(xl), len(yl)))
            bad.append(f"{a.name}/{rel}: first difference at line {first + 1}: "
                       f"{xl[first] if first < len(xl) else '<end>'!r} vs {yl[first] if first < len(yl) else '<end>'!r}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["save", "check"])
    ap.add_argument("snap", type=Path)
    ap.add_argument("--zoo", type=Path, help="an `updelta demo --out` folder whose runs/ are compared")
    ap.add_argument("--smollm2", action="store_true", help="also SmolLM2 against a 4-step bf16 fine-tune")
    a = ap.parse_args()
    if a.mode == "save":
        a.snap.mkdir(parents=True, exist_ok=True)
        if a.zoo:
            _zoo(a.zoo, a.snap)
        if a.smollm2:
            _smollm2(a.snap)
        print(f"saved into {a.snap}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp)
        bad = []
        if a.zoo:
            _zoo(a.zoo, new)
            bad += _compare_results(a.snap / "zoo", new / "zoo") + _compare_text(a.snap / "zoo_report",
                                                                                 new / "zoo_report")
        if a.smollm2:
            _smollm2(new)
            for mode in ("fast", "full"):
                bad += _compare_results(a.snap / f"smollm2_{mode}", new / f"smollm2_{mode}")
    for line in bad:
        print("DIFFERS:", line)
    print("identical" if not bad else f"{len(bad)} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
