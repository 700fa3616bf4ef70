"""The plan of a scan: picklable per-tensor jobs, made from the pairing by pure functions.

A job holds plain data only (locations of the tensor's bytes, its name info, the run pairs, the
element range, the options and the per-job settings): no open files, no checkpoints. It can be
sent to a thread, a process, another machine or a device queue, and `scan.jobs.cheap.run_job` /
`scan.jobs.spectral.run_spectral_job` compute it there.

Everything that changes numbers is fixed here, never by the executor:
- cheap jobs: a tensor of more than `PART_BLOCKS` blocks is split into parts of `PART_BLOCKS` blocks
  (block boundaries are those of the unsplit tensor); each part returns its per-block partial sums
  and `scan.jobs.cheap.tensor_records` adds them in block order, exactly as one sequential pass would;
- spectral jobs: one per 2-D tensor (stacked experts are split into 2-D rows), all runs in it, largest first;
- torch threads per job, the same for every job of a pass, so the serial and the threaded executor
  give the same numbers (torch's thread count is process-wide: jobs in flight together must ask for
  the same count, see `scan.jobs.read.use_threads`): spectral jobs `max(1, torch_threads // workers)`; cheap
  jobs the caller's `torch_threads` (the torch path's float64 reductions then add in the same order
  as before this plan existed; the C kernel uses none).
`cost` (bytes a job materialises, an estimate) lets an executor keep the largest jobs apart.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from updelta.errors import UpdeltaError
from updelta.families.heads import HeadSplit
from updelta.families.naming import TensorName
from updelta.io.locations import FactoredLocation, TensorLocation, is_factored
from updelta.metrics import lens as ml
from updelta.options import DiffOptions
from updelta.scan.pairing import Pairing

PART_BLOCKS = 64  # cheap jobs cover at most this many blocks (16M elements with the default block)
CUDA_MIN_BLOCK = 1 << 24  # elements per block on CUDA (fewer, larger transfers)
MAX_DEFAULT_WORKERS = 4
# Spectral cost: float copies of the tensor alive at once. fast: D, W0 and W1 as stored (half a copy each in bf16),
# the solver's blocks; full: W0, W1, D, W0's factors (U0 whole) and LAPACK's work copy.
SPECTRAL_COPIES = {"fast": 2, "full": 8}
SPECTRAL_PAIRING = 1.5  # spectral jobs in flight together may cost at most this times the largest one


def block_elems(device: str, opts: DiffOptions) -> int:
    """Elements per block of the cheap pass on `device` (at least `CUDA_MIN_BLOCK` off the CPU)."""
    block = max(int(opts.block_elems), 1)
    return block if device == "cpu" else max(block, CUDA_MIN_BLOCK)


def spectral_budget(jobs) -> int:
    """The memory budget (bytes) for a scan's spectral jobs: SPECTRAL_PAIRING times the largest job's cost, so the
    largest tensors never run side by side while small ones fill the other workers."""
    return int(SPECTRAL_PAIRING * max((j.cost for j in jobs), default=0))


@dataclass(frozen=True)
class Env:
    """What the planner needs to know about the machine (found by the caller, so planning stays pure)."""

    device: str  # "cpu" or "cuda" (or "cuda:N")
    kernel: bool  # the C kernel is available and the device is the CPU
    cores: int  # os.cpu_count()
    torch_threads: int  # torch.get_num_threads() of the caller: the BLAS thread budget


@dataclass(frozen=True)
class Side:
    """One run's side of a tensor."""

    run: str
    loc: TensorLocation
    tied: bool  # read from the run's embedding because its head is absent
    added_rows: int  # rows beyond the base's (vocabulary resize), 0 otherwise


@dataclass(frozen=True)
class TensorSpec:
    """A paired tensor as plain data: what every job of it needs."""

    index: int  # position in the pairing
    name: str
    info: TensorName
    transposed: bool  # stored [in, out] (GPT-2 Conv1D): spectral work transposes it
    base: TensorLocation
    base_tied: bool
    sides: tuple[Side, ...]  # in run order
    pairs: tuple[tuple[str, str], ...]  # the scan's run pairs with both runs in this tensor
    heads: HeadSplit | None = None  # attention-head ranges (families/heads.py), None when not an attention weight

    @property
    def numel(self) -> int:
        return self.base.numel

    @property
    def shape(self) -> tuple[int, ...]:
        return self.base.shape


@dataclass(frozen=True)
class CheapJob:
    """Elements [start, start + count) of one tensor, for every run and pair: the cheap metrics' partial sums."""

    tensor: TensorSpec
    part: int  # index of this part among the tensor's parts
    parts: int
    start: int
    count: int
    block: int  # elements per block
    opts: DiffOptions
    device: str
    kernel: bool
    threads: int

    @property
    def cost(self) -> int:
        """Bytes of the read and widening buffers in flight."""
        n = min(self.block, self.count)
        return n * (self.tensor.base.itemsize + 4 + sum(s.loc.itemsize + 4 for s in self.tensor.sides))

    @property
    def nbytes(self) -> int:
        """Bytes this job reads from the checkpoints (for progress)."""
        return self.count * (self.tensor.base.itemsize + sum(s.loc.itemsize for s in self.tensor.sides))


@dataclass(frozen=True)
class SpectralJob:
    """The spectral columns of one 2-D tensor, for every run."""

    tensor: TensorSpec
    opts: DiffOptions
    device: str
    threads: int
    lens: bool = False  # also the update's top directions for the logit lens (scan/jobs/lens.py)

    @property
    def cost(self) -> int:
        """Bytes materialised at once (an estimate: float copies of the tensor, see SPECTRAL_COPIES)."""
        wide = 8 if ("float64" in (self.tensor.base.dtype, *(s.loc.dtype for s in self.tensor.sides))
                     or (self.opts.spectral == "full" and self.opts.spectral_float64)) else 4
        return self.tensor.numel * wide * SPECTRAL_COPIES.get(self.opts.spectral, 4)


@dataclass(frozen=True)
class FactoredJob:
    """The adapter sides `runs` of one tensor and its run pairs `pairs` with an adapter side (plain data)."""

    tensor: TensorSpec
    runs: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    block: int  # elements per row block (at least one row)
    opts: DiffOptions
    device: str
    threads: int

    @property
    def cost(self) -> int:
        """Bytes in flight: a few float64 row blocks per side and the factors."""
        sides = [s for s in self.tensor.sides if s.run in self.runs]
        fac = sum(factor_elems(s.loc) for s in sides)
        return 8 * (4 * self.block * (1 + len(self.tensor.sides)) + fac)

    @property
    def nbytes(self) -> int:
        return self.tensor.numel * self.tensor.base.itemsize


def factor_elems(loc: FactoredLocation) -> int:
    if loc.kind == "zero":
        return 0
    return sum(x.numel for x in (loc.a, loc.b, loc.magnitude) if x is not None)


def split(specs, opts: DiffOptions, device: str, threads: int, block: int):
    """(specs of the dense work, factored jobs): adapter sides and their pairs move to one job per tensor."""
    dense, jobs = [], []
    for t in specs:
        fac = tuple(s.run for s in t.sides if is_factored(s.loc))
        if not fac:
            dense.append(t)
            continue
        pairs = tuple(p for p in t.pairs if p[0] in fac or p[1] in fac)
        kept = tuple(s for s in t.sides if s.run not in fac)
        dense.append(replace(t, sides=kept, pairs=tuple(p for p in t.pairs if p not in pairs)))
        jobs.append(FactoredJob(t, fac, pairs, block, opts, device, threads))
    return tuple(dense), tuple(jobs)


@dataclass(frozen=True)
class LensSpec:
    """Where the base's unembedding and final norm are, and what the lens covers (plain data)."""

    head: TensorLocation  # [vocab, hidden]
    head_name: str
    tied: bool  # the embedding, read because the head is tied to it
    norm: TensorLocation | None  # [hidden]; None: the family declares no final-norm weight
    norm_name: str | None
    offset: float  # gain = norm weight + offset (Gemma: 1)
    modules: tuple[str, ...]
    k: int  # directions per update (DiffOptions.lens_k)

    @property
    def hidden(self) -> int:
        return int(self.head.shape[1])


@dataclass(frozen=True)
class Entry:
    """One run's directions of one tensor."""

    run: str
    name: str
    layer: int | None
    module: str
    dirs: ml.Directions


@dataclass(frozen=True)
class LensJob:
    spec: LensSpec
    entries: tuple[Entry, ...]
    device: str
    threads: int

    @property
    def cost(self) -> int:
        """Bytes in flight: one float32 row block of W_U and its scores."""
        h = self.spec.hidden
        return ml.block_rows(h) * (h + sum(e.dirs.sigma.size for e in self.entries)) * 4


@dataclass(frozen=True)
class Plan:
    tensors: tuple[TensorSpec, ...]
    cheap: tuple[CheapJob, ...]  # tensor order, parts in element order
    spectral: tuple[SpectralJob, ...]  # largest first
    pairs: tuple[tuple[str, str], ...]
    workers: int
    cheap_threads: int  # torch threads of every cheap job
    spectral_threads: int  # torch (BLAS) threads of every spectral job
    device: str
    kernel: bool
    factored: tuple[FactoredJob, ...] = ()  # adapter sides of a tensor (docs/adapters.md)
    lens: LensSpec | None = None  # the logit lens's unembedding and final norm (docs/metrics.md)

    @property
    def read_bytes(self) -> int:
        return sum(j.nbytes for j in self.cheap)


def resolve_pairs(runs: list[str], pairs: list[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    """The run pairs to measure: `pairs` checked against `runs`, default every unordered pair in run order."""
    if pairs is None:
        return tuple((a, b) for i, a in enumerate(runs) for b in runs[i + 1:])
    out = tuple((a, b) for a, b in pairs)
    bad = [p for p in out if p[0] not in runs or p[1] not in runs or p[0] == p[1]]
    if bad:
        raise UpdeltaError(f"pairs {[tuple(p) for p in bad]}: each pair names two different runs of {runs}")
    return out


def resolve_workers(workers: int, env: Env) -> int:
    if env.device.startswith("cuda"):
        return 1
    if workers and workers > 0:
        return int(workers)
    return max(1, min(env.cores, MAX_DEFAULT_WORKERS))


def tensor_specs(pairing: Pairing, pairs: tuple[tuple[str, str], ...]) -> tuple[TensorSpec, ...]:
    specs = []
    for i, t in enumerate(pairing.tensors):
        sides = tuple(Side(r, s.ref.location, bool(s.tied), int(s.added_rows)) for r, s in t.runs.items())
        present = set(t.runs)
        specs.append(TensorSpec(i, t.name, t.info, bool(t.transposed), t.base.location, bool(t.base_tied), sides,
                                tuple(p for p in pairs if p[0] in present and p[1] in present),
                                pairing.heads.get(t.name)))
    return tuple(specs)


def wants(t, spec: LensSpec | None) -> bool:
    """Whether tensor `t` (a `plan.TensorSpec`) gets lens directions."""
    if spec is None or len(t.shape) != 2:
        return False
    i = t.info
    out = t.shape[1] if t.transposed else t.shape[0]
    return (i.module in spec.modules and i.param == "weight" and i.tower is None and i.expert is None
            and int(out) == spec.hidden)


def make_plan(pairing: Pairing, pairs: tuple[tuple[str, str], ...], opts: DiffOptions, env: Env,
              lens=None) -> Plan:
    """Every job of a scan, in plan order (pure: the same inputs give the same plan). `lens`: a
    `plan.LensSpec` (the spectral jobs of its output-side tensors also compute their top directions)."""
    workers = resolve_workers(opts.workers, env)
    cheap_threads = max(1, env.torch_threads)
    spectral_threads = max(1, env.torch_threads // workers)
    block = block_elems(env.device, opts)
    part = block * PART_BLOCKS
    specs = tensor_specs(pairing, pairs)
    # adapter sides leave the cheap jobs for their own (docs/adapters.md)
    dense, factored = split(specs, opts, env.device, spectral_threads, block)
    cheap = []
    for t in dense:
        if not t.sides:  # every side is an adapter's
            continue
        n = t.numel
        starts = list(range(0, n, part)) or [0]
        for k, s in enumerate(starts):
            cheap.append(CheapJob(t, k, len(starts), s, min(part, n - s), block, opts, env.device, env.kernel,
                                  cheap_threads))
    spectral: list[SpectralJob] = []
    if opts.spectral != "off":
        spectral = [SpectralJob(t, opts, env.device, spectral_threads, wants(t, lens))
                    for t in specs if len(t.shape) == 2]
        spectral.sort(key=lambda j: -j.cost)  # stable: equal costs keep tensor order
    return Plan(specs, tuple(cheap), tuple(spectral), pairs, workers, cheap_threads, spectral_threads, env.device,
                env.kernel, factored, lens if spectral else None)
