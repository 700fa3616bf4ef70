"""The Python API: `diff`, `compare` and `load`, each returning a `Result` of DataFrames.

    import updelta
    r = updelta.diff("base/", "runs/sft/")            # per-tensor table in r.tensors
    c = updelta.compare("base/", {"sft": "runs/sft", "dft": "runs/dft"})
    c.pairs_summary                                    # delta cosine, mask Jaccard, ...
    g = updelta.compare("base/", {"sft": "runs/sft", "grpo": "runs/grpo"}, run_bases={"grpo": "sft"})

`load` (and everything that works on saved results) does not import torch; `diff` and `compare`
import the engine when called.
"""
from __future__ import annotations

import os
from pathlib import Path

from updelta.options import DiffOptions
from updelta.tables.result import Result, load  # noqa: F401
from updelta.tables.trajectory import Trajectory, build_table, find_checkpoints, step_run_name


def options_from(options: DiffOptions | None, overrides: dict) -> DiffOptions:
    opts = options or DiffOptions()
    if overrides:
        for k in ("include", "exclude"):
            if isinstance(overrides.get(k), str):
                overrides[k] = (overrides[k],)
            elif k in overrides:
                overrides[k] = tuple(overrides[k])
        opts = opts.replace(**overrides)
    return opts


def checkpoint_run_name(path: str | os.PathLike) -> str:
    """The default run name of a checkpoint path: its folder name, or its file name without suffix."""
    p = Path(str(path).rstrip("/"))
    weights_file = p.suffix in (".safetensors", ".bin", ".pt", ".pth") and not p.is_dir()
    return (p.stem if weights_file else p.name) or "finetuned"  # a Hub id keeps its dots: org/Qwen2.5-0.5B


def diff(base: str | os.PathLike, finetuned: str | os.PathLike, options: DiffOptions | None = None,
         name: str | None = None, **overrides) -> Result:
    """Compare one fine-tuned checkpoint with its base.

    `options` is a `DiffOptions`; keyword overrides (e.g. `atol=1e-6, spectral="off"`) replace its fields.
    The run is named `name`, by default after the fine-tuned path (`checkpoint_run_name`).
    """
    from updelta.scan.engine import scan  # torch: the engine loads only when a scan runs

    return scan(base, {name or checkpoint_run_name(finetuned): finetuned}, options_from(options, overrides))


def compare(base: str | os.PathLike, runs: dict[str, str | os.PathLike], options: DiffOptions | None = None,
            run_bases: dict[str, str | os.PathLike] | None = None, **overrides) -> Result:
    """Compare several fine-tunes of one base in one streaming pass (each tensor read once per checkpoint).

    Runs are paired in the order given: (a, b) with a before b. `run_bases` ({run: path}, any input a base
    accepts; a value that is a run name stands for that run's path) measures those runs from a checkpoint of their
    own, e.g. RL from the SFT checkpoint it started from: `run_bases={"grpo": "runs/sft"}`. Cross-run metrics are
    then computed only between runs of the same base; the other pairs are null in `pairs_summary` and listed in
    `meta["pairs_skipped"]`; every run's base is in `meta["run_bases"]` and `summary.base` (docs/inputs.md,
    Per-run bases).
    """
    from updelta.scan.engine import scan  # torch: the engine loads only when a scan runs

    return scan(base, dict(runs), options_from(options, overrides), run_bases=dict(run_bases or {}))


def base_identities(base: str | os.PathLike, runs: dict[str, str | os.PathLike],
                    run_bases: dict[str, str | os.PathLike] | None = None, options: DiffOptions | None = None,
                    **overrides) -> dict[str, dict]:
    """{run: identity (`Checkpoint.identity()`) of the base `compare` would measure it from}: headers and
    fingerprints only, no tensor read (checks such as the evaluation-base check before a long pass)."""
    from updelta.scan.engine import base_identities as identities  # torch: the engine loads only when a scan runs

    return identities(base, dict(runs), options_from(options, overrides), dict(run_bases or {}))


def trajectory(base: str | os.PathLike, checkpoints, options: DiffOptions | None = None, **overrides) -> Trajectory:
    """Every metric of each checkpoint against `base`, by training step, plus the updates between checkpoints.

    `checkpoints`: folders/files or globs; ordered by the step number in each name (`checkpoint-STEP`).
    """
    from updelta.scan.engine import scan  # torch: only when a trajectory is measured

    found = find_checkpoints([checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints))
    steps = [s for s, _ in found]
    paths = [p for _, p in found]
    names = [step_run_name(s) for s in steps]
    pairs = [(names[i], names[i + 1]) for i in range(len(names) - 1)]
    pairs += [(names[i], names[i + 2]) for i in range(len(names) - 2)]
    res = scan(base, dict(zip(names, paths)), options_from(options, dict(overrides)), pairs=pairs)
    table = build_table(res, steps, paths)
    meta = {**res.meta, "steps": steps, "checkpoints": [str(p) for p in paths],
            "trajectory": "update_fro = ||W_k - W_{k-1}||_F (first step: against the base); cos_prev_update = "
                          "cos(W_{k-1} - W_{k-2}, W_k - W_{k-1}); cos_delta_prev = cos(D_{k-1}, D_k), D = W - W0"}
    return Trajectory(table, res, meta)
