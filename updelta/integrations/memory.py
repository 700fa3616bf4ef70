"""In-memory tensors in, the engine's per-tensor records out: `updelta diff` without files.

    records = measure({name: (w0, w1)}, opts, family=fam, run="step-100")
    result = updelta.tables.result.build_result(records, [], meta)

The same code as the streaming scan (`engine.scan`), fed from tensors instead of readers:
- the cheap partial sums of each block come from the same kernels (the C kernel, through its adapter `scan.jobs.kernel`,
  on CPU for float32/bfloat16/float16, `metrics.elementwise.partial_sums` in torch on any other device
  or dtype), over blocks of `opts.block_elems` elements (at least `plan.CUDA_MIN_BLOCK` off the CPU),
  the block boundaries of the scan;
- `scan.jobs.cheap.tensor_records` adds them up and turns them into one record per tensor (`metrics.sums.finalize`:
  every figure derived from raw sums by `updelta.metrics.schema`);
- spectral columns (`spectral="fast"` or `"full"`) come from `metrics.spectral.spectral_columns` on the
  2-D tensors, oriented [out, in] like the scan (GPT-2 Conv1D weights transposed);
- names are parsed with the model family (`naming.resolve_family`, from the tensor names and the model's
  config dict), so the records carry the same layer, component and module as the scan's.

Tensors stay where they are (CPU or the training device); each block is read in its stored dtype, so the
sparsity counts are those of checkpoints saved in that dtype (docs/metrics.md, "Update sparsity").
`sums_records` turns partial sums that were added elsewhere (across the shards of a sharded parameter) into
records the same way.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from updelta.families.naming import Family, is_ignored, is_transposed, parse, resolve_family
from updelta.io.locations import RAW_DTYPES, TensorLocation
from updelta.metrics import elementwise as ew
from updelta.metrics.schema import BlockSums
from updelta.options import DiffOptions
from updelta.scan.jobs import kernel
from updelta.scan.jobs.cheap import CheapPart, tensor_records
from updelta.scan.pairing import filtered_out
from updelta.scan.plan import Side, TensorSpec, block_elems

MEMORY = "memory"  # the `format` of in-memory tensor locations (no file behind them)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the dtype names of `io` and of the `dtype_base`/`dtype_ft` columns)."""
    return str(dtype).removeprefix("torch.")


def family_of(names: Iterable[str], config: dict | None = None) -> Family:
    """The model family from the tensor names and a config dict (`model.config.to_dict()`), as for a checkpoint."""
    return resolve_family(list(names), config).family


def selected(name: str, opts: DiffOptions, family: Family) -> bool:
    """Whether tensor `name` is measured: not a family buffer, and through the include/exclude filters (as in
    pairing)."""
    return not is_ignored(name, family) and not filtered_out(name, opts)


def block_size(device: torch.device, opts: DiffOptions) -> int:
    """Elements per block: the scan's (`plan.make_plan`)."""
    return block_elems(device.type, opts)


def _kernel_array(x: torch.Tensor):
    """A CPU tensor as the kernel's input (`kernel.kernel_input`: stored elements, bf16 as 16-bit integers)."""
    raw = x.view(torch.int16).numpy() if x.dtype == torch.bfloat16 else x.numpy()
    return kernel.kernel_input(raw, dtype_name(x.dtype))


def block_sums(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions) -> list[BlockSums]:
    """The partial sums of every block of (w0, w1) (same shape, any device), in block order: the records
    `metrics.sums.Sums.add` takes."""
    a, b = w0.detach().reshape(-1), w1.detach().reshape(-1)
    if a.device != b.device:
        a = a.to(b.device)
    if a.numel() != b.numel():
        raise ValueError(f"w0 has {a.numel()} elements, w1 {b.numel()}")
    fused = b.device.type == "cpu" and kernel.accepts(dtype_name(a.dtype), dtype_name(b.dtype))
    if fused:
        a, b = a.contiguous(), b.contiguous()
    block = block_size(b.device, opts)
    out = []
    for s in range(0, b.numel(), block):
        x, y = a[s:s + block], b[s:s + block]
        if fused:
            out.append(kernel.stats(*_kernel_array(x), *_kernel_array(y), opts.atol, opts.eta, None))
        else:
            out.append(ew.partial_sums(x, y, opts.atol, opts.eta))
    return out


def spec(index: int, name: str, family: Family, shape: tuple[int, ...], dtype0: torch.dtype, dtype1: torch.dtype,
         run: str) -> TensorSpec:
    """The `TensorSpec` of an in-memory tensor (locations that name no file), as `scan.jobs.cheap.tensor_records` takes it."""
    for d in (dtype0, dtype1):
        if dtype_name(d) not in RAW_DTYPES:
            raise ValueError(f"{name}: dtype {d} is not one updelta measures")
    loc0 = TensorLocation(MEMORY, MEMORY, name, dtype_name(dtype0), tuple(shape))
    loc1 = TensorLocation(MEMORY, MEMORY, name, dtype_name(dtype1), tuple(shape))
    return TensorSpec(index, name, parse(name, family), is_transposed(name, family), loc0, False,
                      (Side(run, loc1, False, 0),), ())


def sums_records(spec_: TensorSpec, blocks: list[BlockSums]) -> dict:
    """The record of one tensor from its partial sums (per block, or already added up: one record)."""
    run = spec_.sides[0].run
    part = CheapPart(spec_.index, 0, {run: list(blocks)}, {})
    out = tensor_records(spec_, [part])
    return out.records[0]


def spectral_record(w0: torch.Tensor, w1: torch.Tensor, spec_: TensorSpec, opts: DiffOptions) -> dict:
    """The spectral columns of a 2-D tensor, as the scan computes them (`scan.jobs.spectral.run_spectral_job`): float32
    (float64 when either side is), oriented [out, in]."""
    from updelta.metrics import spectral  # torch: loaded only on this path

    wide = torch.float64 if torch.float64 in (w0.dtype, w1.dtype) else torch.float32
    a = w0.detach().to(device=w1.device, dtype=wide).reshape(spec_.shape)
    b = w1.detach().to(dtype=wide).reshape(spec_.shape)
    if spec_.transposed:
        a, b = a.transpose(-1, -2), b.transpose(-1, -2)
    return spectral.spectral_columns(a.contiguous(), b.contiguous(), opts)


def measure_one(index: int, name: str, w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions, family: Family,
                run: str) -> dict:
    """The record of one in-memory tensor pair (cheap columns, and spectral ones for 2-D tensors when asked)."""
    s = spec(index, name, family, tuple(w1.shape), w0.dtype, w1.dtype, run)
    rec = sums_records(s, block_sums(w0, w1, opts))
    if opts.spectral != "off" and len(s.shape) == 2:
        rec.update(spectral_record(w0, w1, s, opts))
    return rec


def measure(pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], opts: DiffOptions, *, family: Family,
            run: str) -> list[dict]:
    """One record per (name, (w0, w1)), in the given order; `w0` may live on another device than `w1` (it is moved
    one tensor at a time). Names are not filtered here (see `selected`)."""
    return [measure_one(i, n, w0, w1, opts, family, run) for i, (n, (w0, w1)) in enumerate(pairs.items())]
