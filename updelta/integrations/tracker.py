"""Track a model's update against its starting weights while it trains, in-process, framework-neutral.

    tracker = Tracker(model, TrackOptions(every_n_steps=50), out="runs/x/")
    tracker.begin(step=0)                    # before the first optimizer step: keep the starting weights
    ...
    if tracker.due(step):
        logs = tracker.measure(step).logs    # {"updelta/rel_delta": ..., "updelta/attn/rel_delta": ...}

What it measures is `updelta diff START CHECKPOINT-STEP` without the files: per tensor, the partial sums of
the scan's kernels (`integrations.memory`), records by `scan.jobs.cheap.tensor_records`, aggregates by `result.build_result`
(docs/metrics.md for every definition). The transformers callback (`integrations.transformers`) and the
embedded trainer (`updelta train ... --track-every N`) both use it.

Where W0 comes from:
- trainable parameters: a copy taken at `begin`, in the dtype the run saves (`save_dtype`; "auto" keeps each
  parameter's own dtype), on the CPU (`keep_on="cpu"`) or beside the parameter (`keep_on="device"`): one extra
  copy of the trainable weights at most; or, with `base=`, the tensors of that checkpoint, read when measured
  (no copy);
- frozen parameters: measured once at `begin` (their update is zero as long as nothing writes to them);
- PEFT LoRA layers (a `peft` model): the update is the adapter's, D = the layer's `get_delta_weight` (summed over
  active adapters, less its value at `begin`), W0 the frozen base weight and W1 = W0 + D in W0's dtype (what a
  merged checkpoint stores); the row is named after the base weight (`...q_proj.weight`). The factors themselves
  are not rows.
Sparsity is counted between W0 and W1 in `save_dtype` (the dtype of the checkpoints the run writes), stated in
`meta["tracking"]`.

Sharded parameters (FSDP, DeepSpeed ZeRO-3; `shards=True`): every rank measures its own shard and the partial sums
are all-reduced (`torch.distributed`; maxima with MAX) before records are made; only the main rank builds results.
Spectral figures need whole matrices: refused there (`check_spectral`).

`out`: a folder; every measurement appends its rows to `out/trajectory.parquet`, rewritten atomically: the table
of `updelta trajectory` (levels model, component, layer, tensor; step and every per-step column against the start)
with the consecutive-update columns null (no previous weights are kept). `updelta plot` and `updelta report --from`
read it (`updelta.tables.trajectory.load_result`).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import pandas as pd
import torch

from updelta._version import __version__
from updelta.errors import UpdeltaError, UpdeltaWarning
from updelta.families.naming import canonical
from updelta.integrations import memory
from updelta.io import open_checkpoint
from updelta.io.hub import locate
from updelta.io.readers import open_reader
from updelta.metrics.sums import MAX_FIELDS, BlockSums, Sums, field_types
from updelta.options import DiffOptions, check_fields, option, shared
from updelta.scan.engine import nonfinite_warning
from updelta.scan.jobs import kernel
from updelta.scan.jobs.read import raw_to_torch
from updelta.tables.result import build_result
from updelta.tables.trajectory import UPDATE_COLS, Trajectory, build_table, load_table, step_run_name as run_name

MEMORY_FORMAT = memory.MEMORY

LOG_METRICS = ("rel_delta", "delta_fro", "cos_delta_base", "sparsity_exact", "sparsity_atol", "sparsity_rtol")
PREFIX = "updelta/"
START = "start"  # the label of the starting weights
SaveDtype = Literal["auto", "float32", "bfloat16", "float16"]
Reduce = Callable[[torch.Tensor, torch.Tensor], None]  # (sums [n, len(SUMMED)], maxima [n, len(MAX_FIELDS)]) in place
SUMMED = tuple(f for f in BlockSums._fields if f not in MAX_FIELDS)  # all-reduced by sum; MAX_FIELDS by max


@dataclass(frozen=True)
class TrackOptions:
    """Options of in-process tracking (`track`, `updelta train --track-every`)."""

    every_n_steps: int = option(50, "Measure every N optimizer steps (and at the end of training).", at_least=1)
    spectral: Literal["off", "fast"] = option("off", "Spectral figures of 2-D updates: off, or fast (top-k singular "
                                                   "values; `updelta/{component}/stable_rank`, median over tensors).")
    include: tuple[str, ...] = shared(DiffOptions, "include")
    exclude: tuple[str, ...] = shared(DiffOptions, "exclude")
    keep_on: Literal["cpu", "device"] = option("cpu", "Where the copy of the starting weights lives: cpu, or device "
                                                    "(beside each parameter; faster, costs accelerator memory).")
    save_dtype: SaveDtype = option("auto", "The dtype the run saves checkpoints in: sparsity is counted there and the "
                                         "starting copy kept in it (auto: each parameter's own dtype).")
    atol: float = shared(DiffOptions, "atol")
    eta: float = shared(DiffOptions, "eta")
    topk: int = shared(DiffOptions, "topk")

    def __post_init__(self) -> None:
        check_fields(self)

    def engine(self) -> DiffOptions:
        """The engine options these measurements correspond to (what `updelta diff` would be given)."""
        return DiffOptions(atol=self.atol, eta=self.eta, include=self.include, exclude=self.exclude,
                           spectral=self.spectral, topk=self.topk, progress=False)


@dataclass
class Measurement:
    """One measurement: the step, the `Result` (None on ranks other than the main one) and the logged values."""

    step: int
    result: object
    logs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def check_spectral(spectral: str, sharding: str | None) -> None:
    """Refuse spectral figures of sharded parameters (each rank holds a slice of every matrix)."""
    if sharding and spectral != "off":
        raise UpdeltaError(f"spectral={spectral!r}: parameters are sharded ({sharding}); spectral figures need whole "
                           f"matrices (a gather of every weight). Track with spectral='off' and run `updelta diff` "
                           f"on saved checkpoints for spectra")


def log_values(result, spectral: str) -> dict[str, float]:
    """The logged values of a `Result` of one run: `updelta/{metric}` for the whole model, `updelta/{component}/
    {metric}` per component, and with spectral `updelta/{component}/stable_rank` (median over its 2-D tensors).
    Undefined (NaN) figures are left out."""
    out: dict[str, float] = {}

    def put(key: str, v) -> None:
        if v is not None and not pd.isna(v) and math.isfinite(float(v)):
            out[key] = float(v)

    if not result.summary.empty:
        row = result.summary.iloc[0]
        for m in LOG_METRICS:
            put(PREFIX + m, row.get(m))
    for _, row in result.components.iterrows():
        comp = row["component"]
        for m in LOG_METRICS:
            put(f"{PREFIX}{comp}/{m}", row.get(m))
        if spectral != "off" and "stable_rank" in row:
            put(f"{PREFIX}{comp}/stable_rank", row.get("stable_rank"))
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    """The elements of a (possibly sharded) parameter this rank holds, flat: a DTensor's local shard (FSDP2), a
    DeepSpeed ZeRO-3 partition without its padding, else the tensor itself."""
    if hasattr(t, "to_local"):
        return t.to_local().reshape(-1)
    ds = getattr(t, "ds_tensor", None)
    if ds is not None:
        import torch.distributed as dist  # torch: kept out of torch-free paths

        part = ds.numel()
        rank = dist.get_rank() if dist.is_initialized() else 0
        valid = max(0, min(part, int(t.ds_numel) - rank * part))
        return ds.reshape(-1)[:valid]
    return t.reshape(-1)


def _full_shape(t: torch.Tensor) -> tuple[int, ...]:
    shape = getattr(t, "ds_shape", None)
    return tuple(shape) if shape is not None else tuple(t.shape)


def all_reduce(sums: torch.Tensor, maxima: torch.Tensor) -> None:
    """Sum `sums` and take the max of `maxima` over every rank (in place)."""
    import torch.distributed as dist  # torch: kept out of torch-free paths

    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(maxima, op=dist.ReduceOp.MAX)


@dataclass
class _Entry:
    name: str  # the row's name (the base weight's for a LoRA layer)
    param: torch.Tensor | None = None  # a parameter measured against its start
    lora: object = None  # a peft LoRA layer
    trainable: bool = True


def _clean(name: str) -> str:
    """A peft parameter name as the base model names it: `base_model.model.` and `.base_layer` dropped."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def _entries(model: torch.nn.Module) -> list[_Entry]:
    """What a model's update consists of, in parameter order (LoRA layers at their base weight's place)."""
    lora_layers = {}
    if getattr(model, "peft_config", None) is not None:
        from peft.tuners.lora import LoraLayer  # optional: peft adapters only

        lora_layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    out, seen = [], set()
    for n, p in model.named_parameters():
        owner = next((ln for ln in lora_layers if n.startswith(ln + ".")), None)
        if owner is not None:
            if owner in seen:
                continue
            rest = n[len(owner) + 1:]
            if rest.startswith("base_layer.") and rest.endswith("weight"):
                seen.add(owner)
                out.append(_Entry(_clean(n), lora=lora_layers[owner], trainable=True))
            continue  # factors (lora_A/lora_B...) and other parts of the layer are not rows
        out.append(_Entry(_clean(n), param=p, trainable=p.requires_grad))
    return out


def _as(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


class Tracker:
    """The starting weights of a model and the measurement of its update against them (see the module docstring).

    `main`: this process builds results, logs and writes `out` (rank 0). `shards`: parameters are sharded across
    ranks (FSDP, ZeRO-3): sums are all-reduced with `reduce` (default `all_reduce`, every rank must measure).
    `config`: the model's config dict for the family (default `model.config.to_dict()`)."""

    def __init__(self, model: torch.nn.Module, options: TrackOptions | None = None, *, base=None, out=None,
                 main: bool = True, shards: str | None = None, reduce: Reduce | None = None,
                 config: dict | None = None):
        self.model = model
        self.options = options or TrackOptions()
        check_spectral(self.options.spectral, shards)
        self.opts = self.options.engine()
        self.base = None if base is None else str(base)
        self.out = None if out is None else Path(out)
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise UpdeltaError(f"{self.out}: out= takes a folder (trajectory.parquet is written into it)")
        self.main, self.shards = main, shards
        self.reduce = reduce or all_reduce
        if config is None and getattr(model, "config", None) is not None and hasattr(model.config, "to_dict"):
            config = model.config.to_dict()
        self.config = config
        self.entries: list[_Entry] = []
        self.start: dict[str, torch.Tensor] = {}
        self.delta0: dict[str, torch.Tensor] = {}
        self.fixed: dict[str, dict] = {}
        self.rows: list[pd.DataFrame] = []
        self.family = None
        self.last_step: int | None = None
        self._ckpt = None
        self._warned: set[str] = set()

    # ---- start ---------------------------------------------------------------------------------------------------
    def begin(self, step: int = 0) -> None:
        """Keep the starting weights (or open `base`), measure the frozen tensors once, and load the rows of `out`
        from earlier steps (a resumed run appends; rows at or after `step` are dropped)."""
        entries = _entries(self.model)
        self.family = memory.family_of([e.name for e in entries], self.config)
        self.entries = [e for e in entries if memory.selected(e.name, self.opts, self.family)]
        if not self.entries:
            raise UpdeltaError("updelta tracking: no parameter to measure (check include=/exclude=)")
        if self.base is not None:
            self._open_base()
        with torch.no_grad():
            for i, e in enumerate(self.entries):
                if e.lora is not None:
                    d = self._lora_delta(e)
                    if bool((d != 0).any()):
                        self.delta0[e.name] = d.detach().to(self._keep_device(d)).clone()
                elif not e.trainable:
                    self.fixed[e.name] = self._param_sums(i, e) if self.shards else self._param_record(i, e)
                elif self.base is None:
                    w = _as(_local(e.param.detach()) if self.shards else e.param.detach(), self._dtype(e.param))
                    self.start[e.name] = w.to(self._keep_device(w), copy=True)
        self.rows = []
        if self.main and self.out is not None and (self.out / "trajectory.parquet").exists():

            old = load_table(self.out / "trajectory.parquet").table
            self.rows = [old[old["step"] < step]] if (old["step"] < step).any() else []
        self.last_step = None

    def _keep_device(self, t: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.options.keep_on == "cpu" else t.device

    def _dtype(self, t: torch.Tensor) -> torch.dtype | None:
        s = self.options.save_dtype
        return None if s == "auto" else getattr(torch, s)

    def _open_base(self) -> None:

        if self.shards:
            raise UpdeltaError(f"base={self.base}: reading the start from a checkpoint is not supported with sharded "
                               f"parameters ({self.shards}); leave base= out (each rank keeps its shard)")
        self._ckpt = open_checkpoint(locate(self.base, False))
        refs = {canonical(n): r for n, r in self._ckpt.tensors.items()}
        self._base_refs = {}
        for e in self.entries:
            if e.lora is not None:
                continue
            ref = refs.get(canonical(e.name))
            if ref is None:
                raise UpdeltaError(f"base={self.base}: no tensor {e.name} (the model's parameter); pass the "
                                   f"checkpoint training started from")
            if tuple(ref.shape) != tuple(e.param.shape):
                raise UpdeltaError(f"base={self.base}: {e.name} has shape {list(ref.shape)}, the model's "
                                   f"{list(e.param.shape)}; pass the checkpoint training started from")
            self._base_refs[e.name] = ref

    def _base_tensor(self, name: str) -> torch.Tensor:

        ref = self._base_refs[name]
        loc = ref.location
        raw = open_reader(loc).read(0, loc.numel)
        return raw_to_torch(raw, loc.dtype).reshape(tuple(ref.shape)).clone()

    # ---- measuring -----------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether `step` is a measurement step (every N steps)."""
        return step > 0 and step % self.options.every_n_steps == 0 and step != self.last_step

    def _lora_delta(self, e: _Entry) -> torch.Tensor:
        layer = e.lora
        w0 = layer.get_base_layer().weight
        d = torch.zeros(w0.shape, dtype=torch.float32, device=w0.device)
        for a in layer.active_adapters:
            if a in getattr(layer, "lora_A", {}):
                d = d + layer.get_delta_weight(a).float()
        return d

    def _pair(self, e: _Entry) -> tuple[torch.Tensor, torch.Tensor]:
        """(W0, W1) of an entry, W1 in the save dtype."""
        if e.lora is not None:
            w0 = e.lora.get_base_layer().weight.detach()
            w0 = _as(w0, self._dtype(w0))
            d = self._lora_delta(e)
            if e.name in self.delta0:
                d = d - self.delta0[e.name].to(d.device)
            return w0, w0 + d.to(w0.dtype)
        w1 = e.param.detach()
        w1 = _as(_local(w1) if self.shards else w1, self._dtype(w1))
        if not e.trainable:
            return w1, w1
        w0 = self._base_tensor(e.name) if self.base is not None else self.start[e.name]
        return w0, w1

    def _param_record(self, i: int, e: _Entry) -> dict:
        w0, w1 = self._pair(e)
        return memory.measure_one(i, e.name, w0, w1, self.opts, self.family, START)

    def _param_sums(self, i: int, e: _Entry) -> Sums:
        w0, w1 = self._pair(e)
        s = Sums()
        for b in memory.block_sums(w0, w1, self.opts):
            s.add(b)
        return s

    def measure(self, step: int) -> Measurement:
        """Measure the update at `step` (every rank calls it when sharded); the main rank gets the `Result` and the
        log values, and appends the rows to `out`."""

        t0 = time.perf_counter()
        run = run_name(step)
        with torch.no_grad():
            if self.shards:
                records = self._sharded_records(run)
            else:
                records = []
                for i, e in enumerate(self.entries):
                    rec = dict(self.fixed[e.name]) if e.name in self.fixed else self._param_record(i, e)
                    records.append({**rec, "run": run})
        self.last_step = step
        if not self.main:
            return Measurement(step, None, {}, time.perf_counter() - t0)
        meta = self._meta(records, run, step, time.perf_counter() - t0)
        res = build_result(records, [], meta)
        m = Measurement(step, res, log_values(res, self.options.spectral), time.perf_counter() - t0)
        if self.out is not None:
            self._append(res, step)
        return m

    def _sharded_records(self, run: str) -> list[dict]:
        sums = []
        for i, e in enumerate(self.entries):
            sums.append(self.fixed[e.name] if e.name in self.fixed else self._param_sums(i, e))
        dev = self.entries[0].param.device if self.entries[0].param is not None else torch.device("cpu")
        mat = torch.tensor([[float(getattr(s, f)) for f in SUMMED] for s in sums], dtype=torch.float64, device=dev)
        mx = torch.tensor([[float(getattr(s, f)) for f in MAX_FIELDS] for s in sums], dtype=torch.float64, device=dev)
        self.reduce(mat, mx)
        mat, mx = mat.cpu().tolist(), mx.cpu().tolist()
        records = []
        if not self.main:
            return records
        kinds = field_types(BlockSums)
        for i, (e, row, m) in enumerate(zip(self.entries, mat, mx)):
            values = {**dict(zip(SUMMED, row)), **dict(zip(MAX_FIELDS, m))}
            t = BlockSums(**{f: kinds[f](v) for f, v in values.items()})
            p = e.param
            dt = self._dtype(p) or p.dtype
            sp = memory.spec(i, e.name, self.family, _full_shape(p), dt, dt, run)
            records.append(memory.sums_records(sp, [t]))
        return records

    def _meta(self, records: list[dict], run: str, step: int, seconds: float) -> dict:

        dtypes: dict[str, int] = {}
        for r in records:
            dtypes[r["dtype_base"]] = dtypes.get(r["dtype_base"], 0) + 1
        n_params = int(sum(r["numel"] for r in records))
        notes = [f"{r['name']} ({run}: base {r['nonfinite_base']}, ft {r['nonfinite_ft']})" for r in records
                 if r.get("nonfinite_base") or r.get("nonfinite_ft")]
        warn = [nonfinite_warning(notes)] if notes else []
        for w in warn:
            if "nonfinite" not in self._warned:
                self._warned.add("nonfinite")
                warnings.warn(w, UpdeltaWarning, stacklevel=3)
        o = self.opts
        base = {"path": self.base or "start of training (in memory)", "format": MEMORY_FORMAT if self.base is None
                else "checkpoint", "n_tensors": len(records), "n_params": n_params, "dtypes": dtypes}
        adapter = any(e.lora is not None for e in self.entries)
        return {
            "updelta_version": __version__,
            "options": o.as_dict(),
            "base": base,
            "runs": {run: {"path": f"in memory, step {step}", "format": MEMORY_FORMAT, "n_tensors": len(records),
                           "n_params": n_params}},
            "run_order": [run],
            "pairs": [],
            "pairing": {"family": self.family.name, "filtered_out": 0},
            "device": str(self._device()),
            "kernel": "c" if kernel.available() and self._device().type == "cpu" else "torch",
            "hist_edges": None,
            "seconds": round(seconds, 3),
            "conventions": {
                "exact": "W1 == W0 after exact widening",
                "atol": f"|W1 - W0| <= {o.atol} (Mukherjee et al. 2025)",
                "rtol": f"|W1 - W0| <= {o.eta} * max(|W0|, |W1|) (Zhu et al. 2025)",
            },
            "warnings": warn,
            "tracking": {"step": step, "every_n_steps": self.options.every_n_steps,
                         "sparsity_dtype": self.options.save_dtype if self.options.save_dtype != "auto"
                         else "each parameter's own dtype",
                         "start": "checkpoint " + self.base if self.base else f"copy on {self.options.keep_on}",
                         "frozen_tensors": len(self.fixed), "adapter": adapter, "sharded": self.shards},
        }

    def _device(self) -> torch.device:
        for e in self.entries:
            if e.param is not None:
                return e.param.device
        return torch.device("cpu")

    def _append(self, res, step: int) -> None:

        rows = build_table(res, [step], [MEMORY_FORMAT])
        for c in UPDATE_COLS:
            rows[c] = float("nan")
        self.rows.append(rows)
        table = pd.concat(self.rows, ignore_index=True, sort=False)
        order = {"model": 0, "component": 1, "layer": 2, "tensor": 3}
        table = table.assign(_l=table["level"].map(order)).sort_values(["_l", "step"], kind="stable") \
            .drop(columns="_l").reset_index(drop=True)
        steps = sorted(int(s) for s in table["step"].unique())
        runs = {run_name(s): {"path": f"in memory, step {s}", "format": MEMORY_FORMAT} for s in steps}
        meta = {**res.meta, "runs": runs, "run_order": list(runs), "steps": steps,
                "checkpoints": [MEMORY_FORMAT] * len(steps),
                "trajectory": "measured in process against the start of training (updelta.integrations); "
                              "update_fro, update_rel, cos_prev_update, cos_delta_prev are null (no previous "
                              "weights are kept)"}
        self.rows = [table]
        Trajectory(table, None, meta).save(self.out)

    def close(self) -> None:
        """Drop the starting copy and close the base checkpoint."""
        self.start.clear()
        self.delta0.clear()
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None
