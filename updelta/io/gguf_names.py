"""GGUF tensors under Hugging Face names and in Hugging Face's convention (docs/inputs.md, "GGUF").

llama.cpp's converter renames every tensor (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`)
and changes some of them on the way: q/k rows permuted for rotary embeddings in llama-family models, Gemma norms
stored +1, Bloom's fused qkv reshaped, GPT-2's Conv1D weights transposed. Nothing here is our own copy of those
rules:

- names: the `gguf` package's tables (`gguf.get_tensor_name_map(arch, n_blocks)`, HF -> GGUF, many-to-one) are
  inverted against the names the Hugging Face side actually holds, as transformers' `get_gguf_hf_weights_map`
  does against a model's state dict (with the processor's `preprocess_name`);
- values: transformers' `TENSOR_PROCESSORS[arch]` (`modeling_gguf_pytorch_utils`) is probed once per tensor: its
  `process` is run on an index array of the tensor's rows (and, for a tensor of at most `FULL_PROBE` elements
  whose processor needs the whole shape, of every element) and on zeros. A result that is a permutation of the
  indices plus a constant becomes a `Transform` (rows read in that order, the constant added), applied block by
  block. Anything else (a non-affine change such as Mamba's log(-A), an expert tensor the processor splits, a
  tensor too large to probe) is not converted: the tensor keeps its GGUF name and is listed in the notes;
- config: `general.architecture` and the `{arch}.*` keys become a config dict through transformers'
  `GGUF_CONFIG_MAPPING` (model_type, head counts, hidden size, ...), so that the family and the head geometry of
  a GGUF base come from the same tables as transformers' GGUF loader. The architectures work's config ->
  structure function can take this dict as it is (`hf_config`; the hook is `align_gguf`).

`align_gguf(base, runs)` is the pairing hook: when GGUF and Hugging Face checkpoints are compared, every GGUF
checkpoint's tensors are renamed to the Hugging Face side's names and read in its convention; GGUF against GGUF
pairs by GGUF names and stored values. Either way the notes say what was renamed, transformed and left unpaired.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from updelta.errors import CheckpointError

FULL_PROBE = 1 << 22  # elements: a processor that needs the whole tensor is probed on at most this many
# GGUF architecture -> the name transformers' load_gguf_checkpoint gives it ("updated_architecture") before looking
# up GGUF_CONFIG_MAPPING, and the model_type it ends up with (modeling_gguf_pytorch_utils.load_gguf_checkpoint)
UPDATED = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
TEXT_MODEL_TYPES = {"gemma3": "gemma3_text", "gemma4": "gemma4_text", "command-r": "cohere"}


def _transformers():
    """transformers' GGUF tables, or None without transformers."""
    try:
        # optional extra: train (transformers' GGUF tables)
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
        from transformers.modeling_gguf_pytorch_utils import (  # optional extra: train (transformers' GGUF tables)
            TENSOR_PROCESSORS,
            TensorProcessor,
        )
    except ImportError:
        return None
    return GGUF_CONFIG_MAPPING, TENSOR_PROCESSORS, TensorProcessor


def hf_config(metadata: dict, names) -> dict:
    """A config.json-like dict of a GGUF model from its metadata (transformers' GGUF_CONFIG_MAPPING)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return {}
    name = metadata.get("general.name")
    upd = "mistral" if arch == "llama" and isinstance(name, str) and "mistral" in name else UPDATED.get(arch, arch)
    cfg: dict = {"model_type": TEXT_MODEL_TYPES.get(upd, upd),
                 "tie_word_embeddings": "output.weight" not in set(names)}
    tf = _transformers()
    mapping = (tf[0].get(upd) or tf[0].get(arch) or {}) if tf else {}
    for suffix, key in mapping.items():
        v = metadata.get(f"{arch}.{suffix}")
        if v is not None and isinstance(key, str) and not isinstance(v, tuple):
            cfg[key] = v
    return cfg


def _processor(f):
    proc = getattr(f, "_processor", None)
    if proc is None:
        tf = _transformers()
        if tf is None:
            raise CheckpointError(f"{f.path}: comparing a GGUF file with a Hugging Face folder needs transformers "
                                  f"(its GGUF tables): pip install transformers")
        cls = tf[1].get(f.architecture or "", tf[2])
        proc = f._processor = cls(config=hf_config(f.metadata, f.names()))
    return proc


@dataclass(frozen=True)
class Transform:
    """How a stored GGUF tensor becomes the Hugging Face tensor: output row i is stored row `rows[i]` (or output
    element k is stored element `gather[k]`), plus `shift`. `why` is set when the tensor cannot be converted."""

    shape: tuple[int, ...]
    rows: np.ndarray | None = None
    gather: np.ndarray | None = None
    shift: float = 0.0
    transpose: bool = False  # a 2-D tensor stored transposed, read whole (at most FULL_PROBE elements)
    what: str = ""  # "rows permuted", "shifted by -1", ... (for the notes)
    why: str = ""  # non-empty: not convertible

    @property
    def ok(self) -> bool:
        return not self.why

    def read(self, f, name: str, start: int, count: int, vals: np.ndarray) -> None:
        if self.gather is not None or self.transpose:  # a small tensor (<= FULL_PROBE elements) reordered whole
            stored = f.shape(name)
            whole = np.empty(math.prod(stored), dtype=vals.dtype)
            f._stored(name, 0, whole.size, whole)
            if self.transpose:
                vals[:] = whole.reshape(stored).T.reshape(-1)[start:start + count]
            else:
                np.take(whole, self.gather[start:start + count], out=vals)
        elif self.rows is not None:
            cols = math.prod(self.shape[1:])
            r0, r1 = start // cols, -(-(start + count) // cols)
            src = self.rows[r0:r1]
            lo, hi = int(src.min()), int(src.max()) + 1
            window = np.empty((hi - lo) * cols, dtype=vals.dtype)
            if hi - lo <= 2 * (r1 - r0) + 512:  # a local permutation (within heads): one read of the window
                f._stored(name, lo * cols, (hi - lo) * cols, window)
                block = window.reshape(hi - lo, cols)[src - lo].reshape(-1)
            else:
                block = np.empty((r1 - r0) * cols, dtype=vals.dtype)
                for i, r in enumerate(src):
                    f._stored(name, int(r) * cols, cols, block[i * cols:(i + 1) * cols])
            off = start - r0 * cols
            vals[:] = block[off:off + count]
        else:
            f._stored(name, start, count, vals)
        if self.shift:
            vals += vals.dtype.type(self.shift)


def _process(proc, x: np.ndarray, name: str):
    out = proc.process(weights=x, name=name)
    return out.name, np.asarray(out.weights)


def transform_of(f, name: str) -> Transform:
    """The `Transform` of tensor `name` of GGUF file `f`, found by probing transformers' tensor processor."""
    shape = tuple(f.shape(name))
    if f.dtype_name(name) not in ("float32", "float64"):
        return Transform(shape, why="not a float tensor")
    proc = _processor(f)
    numel = math.prod(shape)
    probes = [np.arange(shape[0], dtype=np.float64).reshape(shape[0], *([1] * (len(shape) - 1)))]
    if numel <= FULL_PROBE and len(shape) > 1:
        probes.append(np.arange(numel, dtype=np.float64).reshape(shape))
    why = "not probed"
    for idx in probes:
        try:
            n1, r = _process(proc, idx.copy(), name)
            n0, z = _process(proc, np.zeros_like(idx), name)
        except Exception as e:  # noqa: BLE001 - a processor that fails on this probe: try the next, else refuse
            why = f"transformers' {type(proc).__name__} fails on it ({type(e).__name__})"
            continue
        if n1 is None or n0 is None:
            return Transform(shape, why=f"transformers' {type(proc).__name__} does not map it to one tensor")
        if z.size == 0 or not np.all(np.isfinite(z)) or not np.all(z == z.flat[0]) or not np.all(np.isfinite(r)):
            return Transform(shape, why=f"transformers' {type(proc).__name__} changes its values non-affinely")
        shift = float(z.flat[0])
        perm = r - shift
        if perm.size != idx.size or not np.array_equal(np.sort(perm.reshape(-1)), idx.reshape(-1)):
            why = f"transformers' {type(proc).__name__} changes it in a way updelta cannot apply block by block"
            continue
        what = ([f"shifted by {shift:+g}"] if shift else [])
        if idx.size == shape[0]:  # the row probe (a 1-D tensor's only probe)
            rows = perm.reshape(-1).astype(np.int64)
            if r.shape != idx.shape:
                why = "row probe changed shape"
                continue
            if np.array_equal(rows, np.arange(rows.size)):
                return Transform(shape, shift=shift, what=", ".join(what))
            return Transform(shape, rows=rows, shift=shift, what=", ".join(["rows permuted", *what]))
        gather = perm.reshape(-1).astype(np.int64)
        if r.shape == shape and np.array_equal(gather, np.arange(numel)):
            return Transform(shape, shift=shift, what=", ".join(what))
        cols = math.prod(shape[1:])
        if r.shape == shape:  # a row permutation found by the whole probe (Bloom's fused qkv): rows, not elements
            rows = gather[::cols] // cols
            if np.array_equal(gather, (rows[:, None] * cols + np.arange(cols)).reshape(-1)):
                return Transform(shape, rows=rows, shift=shift, what=", ".join(["rows permuted", *what]))
        if len(shape) == 2 and r.shape == shape[::-1] and np.array_equal(
                gather, np.arange(numel).reshape(shape).T.reshape(-1)):  # GPT-2's Conv1D .T: no index array kept
            return Transform(tuple(r.shape), transpose=True, shift=shift, what=", ".join(["transposed", *what]))
        return Transform(tuple(r.shape), gather=gather, shift=shift,
                         what=", ".join(["elements reordered" + (" (transposed)" if r.shape != shape else ""), *what]))
    return Transform(shape, why=why if numel <= FULL_PROBE else f"{why}; too large to probe whole")


def _split(name: str) -> tuple[str, str]:
    for suf in (".weight", ".bias"):
        if name.endswith(suf):
            return name[:-len(suf)], suf
    return name, ""


def gguf_to_hf(f, hf_names) -> tuple[dict[str, str], list[str]]:
    """{GGUF tensor name: Hugging Face name} for the tensors of GGUF file `f`, by inverting the `gguf` package's
    HF -> GGUF table against `hf_names`; and the GGUF names two HF names claim (left unmapped)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map  # gguf: imported when a GGUF file is read

    arch = f.architecture
    enum = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch), None)
    if enum is None:
        return {}, []
    n_blocks = f.metadata.get(f"{arch}.block_count")
    if not isinstance(n_blocks, int) or isinstance(n_blocks, bool) or not 0 <= n_blocks <= 100_000:
        n_blocks = 1 + max((int(n.split(".")[1]) for n in f.names() if n.startswith("blk.")
                            and n.split(".")[1].isdigit()), default=-1)
    table = get_tensor_name_map(enum, n_blocks)
    proc = _processor(f)
    claims: dict[str, list[str]] = {}
    for hn in hf_names:
        base, suf = _split(proc.preprocess_name(hn))
        g = table.get_name(base)
        if g is None and not base.startswith("model."):
            g = table.get_name("model." + base)
        if g is not None:
            claims.setdefault(g + suf, []).append(hn)
    mapping = {g: hs[0] for g, hs in claims.items() if len(hs) == 1}
    return mapping, sorted(g for g, hs in claims.items() if len(hs) > 1)


def is_gguf(ck) -> bool:
    """Whether checkpoint `ck` was opened from GGUF files."""
    return getattr(ck, "format", None) == "gguf"


def align_gguf(base, runs: dict) -> dict | None:
    """The pairing hook (module docstring): rename the GGUF checkpoints among `base` and `runs` to the first
    Hugging Face checkpoint's names, in place; the notes of what was done (None when no GGUF is compared)."""
    cks = {"base": base, **runs}
    gg = {k: ck for k, ck in cks.items() if is_gguf(ck)}
    if not gg:
        return None
    hf = next((ck for ck in cks.values() if not is_gguf(ck)), None)
    notes: dict = {"paired_by": "GGUF names (stored values)" if hf is None else f"Hugging Face names of {hf.path}"}
    for k, ck in gg.items():
        f0 = ck.files[0]
        types: dict[str, int] = {}
        for t in ck.tensors.values():
            types[t.stored_dtype] = types.get(t.stored_dtype, 0) + 1
        entry = {"path": str(ck.path), "architecture": f0.architecture, "tensor_types": types}
        notes[k] = entry
        if hf is None:
            continue
        if getattr(ck, "gguf_aligned", None) is not None:
            entry.update(ck.gguf_aligned)
            continue
        new, unmapped, unconverted, transformed = {}, [], [], {}
        maps = {}
        for n, ref in ck.tensors.items():
            f = ref.file
            if id(f) not in maps:
                maps[id(f)] = gguf_to_hf(f, hf.tensors)
            mapping, contested = maps[id(f)]
            hn = mapping.get(ref.stored_name)
            if hn is None:
                unmapped.append(n + (" (two Hugging Face names map to it)" if ref.stored_name in contested else ""))
                new[n] = ref
                continue
            tr = f.transform(ref.stored_name)
            if not tr.ok:
                unconverted.append(f"{n} -> {hn}: {tr.why}")
                new[n] = ref
                continue
            if tr.what:
                transformed.setdefault(tr.what, []).append(hn)
            new[hn] = replace(ref, name=hn, shape=tr.shape, hf=True)
        ck.tensors = new
        ck.config = {**hf_config(f0.metadata, [t.stored_name for t in new.values()]), **ck.config}
        done = {"renamed": sum(1 for t in new.values() if t.hf), "unmapped": unmapped, "unconverted": unconverted,
                "transformed": transformed}
        ck.gguf_aligned = done
        entry.update(done)
    return notes
