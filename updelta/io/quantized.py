"""Quantized checkpoints: FP8 weights de-quantized block by block; every other quantized layout refused by name.

`dequantize(ck)` runs when a checkpoint is opened (`opener.open_checkpoint`), on the tensors' names, dtypes and
shapes and on `config.json`'s `quantization_config` (docs/quantized.md):

- **FP8 with scales** (DeepSeek-V3/R1 `weight_scale_inv` block scales, per-tensor and per-row `weight_scale` of
  compressed-tensors / FBGEMM): each FP8 weight and its scale tensor become one `DequantizedRef` whose values are
  float32, `stored * scale` of the element's block, so pairing and the jobs see a float32 tensor. The scale tensors
  and activation scales (`input_scale`, `k_scale`, ...) leave the compared tensors; they are listed in
  `Checkpoint.quantization` (pairing notes `dequantized`). A scale that does not fit its weight is a one-line error.
- **MXFP4, GPTQ/AWQ, bitsandbytes, compressed-tensors packed integers, any other declared method storing packed
  weights**: a one-line `CheckpointError` naming the format, a tensor and the fix, found from the tensor names
  (with or without a config.json), so a packed or scale tensor is never compared as a weight.

An FP8 tensor with no scale beside it stays quantized; pairing refuses it by name when it is compared.
`DequantReader` is the block reader of a de-quantized location (`locations.Dequant`, opened by
`readers.open_reader`): it reads the stored codes of elements [start, start+count) and the (small) scale tensor
once, decodes the codes exactly by table and multiplies each row segment by its blocks' scales in float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from updelta.errors import CheckpointError
from updelta.io.checkpoint import Checkpoint, TensorRef
from updelta.io.dequant import DequantReader
from updelta.io.locations import Dequant, TensorLocation

# Stored weight dtypes de-quantized here (decoded exactly by a 256-entry table); the FNUZ variants are not.
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
# Scale dtypes: widened exactly to float32 (e8m0 is DeepSeek's "ue8m0" power-of-two scale; safetensors only).
SCALE_DTYPES = ("float32", "bfloat16", "float16", "float8_e8m0fnu")
# Scales of activations and of the KV cache: no weight to de-quantize, never compared.
ACTIVATION_SCALES = ("input_scale", "activation_scale", "input_scale_ub", "output_scale", "k_scale", "v_scale",
                     "q_scale")
SCALE_SUFFIXES = ("_scale_inv", "_scale")  # "X_scale_inv" / "X_scale" scales tensor "X"
# quant_method values whose FP8 weights are de-quantized as `code * scale` (None: no quantization_config)
FP8_METHODS = (None, "fp8", "fbgemm_fp8", "compressed-tensors", "modelopt")


@dataclass(frozen=True)
class DequantizedRef(TensorRef):
    """A quantized weight read as float32 values: `stored` (its FP8 codes) times `scale` of each element's block."""

    stored: TensorRef
    scale: TensorRef
    block: tuple[int, int]

    @property
    def stored_dtype(self) -> str:
        return self.stored.dtype

    @property
    def dequant(self) -> Dequant:
        return Dequant(self.stored.dtype, tuple(self.stored.shape), self.scale.location, self.block)

    @property
    def location(self) -> TensorLocation:
        return replace(self.stored.location, dtype="float32", dequant=self.dequant)

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Float32 values of elements [start, start+count) of the flattened tensor."""
        return DequantReader(self.stored, self.scale, self.dequant).read(start, count, out)


# ---- recognising the layouts ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Refused:
    """A quantized layout updelta does not read: how its tensors are named and how to get a comparable checkpoint."""

    label: str
    methods: tuple[str, ...]  # quantization_config.quant_method values
    marks: tuple[str, ...]  # name endings only this layout stores
    fix: str


_DEQUANTIZE_HF = ("load it with transformers, call model.dequantize() and save_pretrained(DIR) (or compare the "
                  "full-precision release it was made from), then compare that folder")
REFUSED = (
    _Refused("MXFP4 (packed 4-bit _blocks with e8m0 _scales, as gpt-oss stores its experts)", ("mxfp4",),
             ("_blocks",), "de-quantize it first: from_pretrained(path, quantization_config=Mxfp4Config("
                           "dequantize=True)).save_pretrained(DIR), or compare the bf16 release"),
    _Refused("GPTQ/AWQ (packed int4 qweight with qzeros, scales and g_idx)", ("gptq", "awq"),
             (".qweight", ".qzeros", ".g_idx"), "compare the full-precision release it was quantized from, or "
                                                  "a de-quantized bf16 copy"),
    _Refused("bitsandbytes (4-bit absmax/quant_map/quant_state or 8-bit SCB/weight_format)", ("bitsandbytes",),
             (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format",
              ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"), _DEQUANTIZE_HF),
    _Refused("compressed-tensors packed integers (weight_packed with weight_scale/weight_zero_point)",
             ("compressed-tensors",), (".weight_packed", ".weight_zero_point", ".weight_g_idx", ".weight_shape"),
             "load it with transformers (quantization_config=CompressedTensorsConfig(dequantize=True)), "
             "save_pretrained(DIR) and compare that folder"),
)


def _method(config: dict) -> tuple[dict, str | None]:
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return {}, (None if quant is None else "unnamed")
    m = quant.get("quant_method")
    return quant, (str(m) if m is not None else "unnamed")


def _marked(fmt: _Refused, name: str, names) -> bool:
    if not name.endswith(fmt.marks) and not (fmt.methods == ("bitsandbytes",) and ".quant_state." in name):
        return False
    return fmt.marks != ("_blocks",) or name.removesuffix("_blocks") + "_scales" in names  # X_blocks beside X_scales


def _refuse_packed(ck: Checkpoint, method: str | None) -> None:
    """One line for the first tensor that marks a layout of `REFUSED` (by name, config.json or not)."""
    for fmt in REFUSED:
        name = next((n for n in ck.tensors if _marked(fmt, n, ck.tensors)), None)
        if name is not None:
            declared = f"config.json declares {method} quantization; " if method else ""
            raise CheckpointError(f"{ck.path}: {declared}tensor {name} is {fmt.label}, which updelta does not "
                                  f"read (its packed and scale tensors are no weights to compare): {fmt.fix}")


def _block_size(quant: dict) -> tuple[int, int] | None:
    """The FP8 block shape [rows, cols] config.json declares: `weight_block_size` (transformers/DeepSeek) or one
    `block_structure` of compressed-tensors' config groups; None when it declares none."""
    cands = [quant.get("weight_block_size")]
    groups = quant.get("config_groups")
    if isinstance(groups, dict):
        cands += [g.get("weights", {}).get("block_structure") for g in groups.values()
                  if isinstance(g, dict) and isinstance(g.get("weights"), dict)]
    found = {tuple(c) for c in cands if isinstance(c, (list, tuple)) and len(c) == 2
             and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in c)}
    return found.pop() if len(found) == 1 else None


def _scale_block(w: TensorRef, s: TensorRef, block: tuple[int, int] | None, ck: Checkpoint) -> tuple[int, int]:
    """The block shape that scale `s` gives weight `w`, or a one-line error when its shape does not fit."""
    if len(w.shape) < 2:
        raise CheckpointError(f"{ck.path}: FP8 tensor {w.name} has shape {list(w.shape)}; updelta de-quantizes "
                              f"FP8 matrices ([..., out, in]) only: leave it out with --exclude")
    *lead, rows, cols = w.shape
    nlead = math.prod(lead)
    if s.dtype not in SCALE_DTYPES or (s.dtype == "float8_e8m0fnu" and s.file.__class__.__name__ == "TorchFile"):
        raise CheckpointError(f"{ck.path}: scale {s.name} of FP8 tensor {w.name} is stored as {s.dtype}; updelta "
                              f"reads float32, bfloat16, float16 (and, in safetensors, e8m0) scales")
    if s.numel == nlead and s.shape in (tuple(lead), tuple(lead) + (1,), tuple(lead) + (1, 1)) or s.numel == 1 == nlead:
        return rows, cols  # one scale per matrix (per tensor)
    if block is not None and s.shape == (*lead, -(-rows // block[0]), -(-cols // block[1])):
        return block
    if s.shape in ((*lead, rows, 1), (*lead, rows)):
        return 1, cols  # one scale per output row (per channel)
    want = (f"[{', '.join(map(str, (*lead, -(-rows // block[0]), -(-cols // block[1]))))}] for blocks "
            f"{list(block)}" if block else "a per-tensor or per-row shape, or config.json's "
                                           "quantization_config.weight_block_size for block scales")
    raise CheckpointError(f"{ck.path}: scale {s.name} has shape {list(s.shape)}, which does not fit FP8 tensor "
                          f"{w.name} {list(w.shape)} (expected {want}); re-save the checkpoint or fix config.json")


def _scale_of(name: str, tensors: dict) -> str | None:
    """The weight that tensor `name` scales, if it is a weight scale: "X.weight_scale_inv" / "X.weight_scale" ->
    "X.weight" whatever X.weight is (so that no such scale is ever compared), "P_scale_inv" / "P_scale" -> "P" when
    P is stored as FP8 (other "P_scale" tensors of dense models are left alone)."""
    last = name.rsplit(".", 1)[-1]
    if last in ACTIVATION_SCALES:
        return None
    for suf in SCALE_SUFFIXES:
        if name.endswith(suf):
            w = name.removesuffix(suf)
            if last.startswith("weight_scale") or (w in tensors and tensors[w].dtype in FP8_DTYPES):
                return w
    return None


def dequantize(ck: Checkpoint) -> None:
    """Recognise `ck`'s quantized layout: refuse what updelta does not read, replace each FP8 weight and its scale
    by one `DequantizedRef` (in place) and record what was done in `ck.quantization`."""
    quant, method = _method(ck.config)
    _refuse_packed(ck, method)
    tensors = ck.tensors
    scales = {n: w for n in tensors if (w := _scale_of(n, tensors)) is not None}
    fp8 = [n for n, t in tensors.items() if t.dtype in FP8_DTYPES]
    if not fp8 and not scales:
        _refuse_declared(ck, method)
        return
    block = _block_size(quant)
    by_weight: dict[str, str] = {}
    for s, w in scales.items():
        wt = tensors.get(w)
        if wt is None or wt.dtype not in FP8_DTYPES:
            what = "is not in the checkpoint" if wt is None else f"is stored as {wt.dtype}, not FP8"
            declared = f"config.json declares {method} quantization; " if method else ""
            raise CheckpointError(f"{ck.path}: {declared}scale tensor {s} scales {w}, which {what}; updelta de-"
                                  f"quantizes FP8 weights only and never compares "
                                  f"scales as weights: re-save the checkpoint de-quantized (bf16/fp32) or whole")
        if w in by_weight:
            raise CheckpointError(f"{ck.path}: FP8 tensor {w} has two scales ({by_weight[w]}, {s}); keep one")
        by_weight[w] = s
    if not by_weight:  # FP8 tensors without scales: refused here when a quantization is declared, else by pairing
        _refuse_declared(ck, method)
        return
    if method not in FP8_METHODS:
        raise CheckpointError(f"{ck.path}: config.json declares {method} quantization with FP8 tensor "
                              f"{next(iter(by_weight))}; updelta de-quantizes FP8 checkpoints of "
                              f"{', '.join(m for m in FP8_METHODS if m)} or without a quantization_config only: "
                              f"compare de-quantized (bf16/fp32) checkpoints")
    blocks: dict[str, int] = {}
    stored: dict[str, int] = {}
    for w, s in by_weight.items():
        wt, st = tensors[w], tensors[s]
        b = _scale_block(wt, st, block, ck)
        tensors[w] = DequantizedRef(w, "float32", wt.shape, wt.file, wt, st, b)
        key = "per tensor" if b == tuple(wt.shape[-2:]) else "per row" if b == (1, wt.shape[-1]) else f"{b[0]}x{b[1]}"
        blocks[key] = blocks.get(key, 0) + 1
        stored[wt.dtype] = stored.get(wt.dtype, 0) + 1
    act = [n for n in tensors if n.rsplit(".", 1)[-1] in ACTIVATION_SCALES]
    for n in (*by_weight.values(), *act):
        del tensors[n]
    _refuse_declared(ck, method)
    ck.quantization = {"method": method or "fp8 (from tensor names)", "dequantized": len(by_weight),
                       "stored_dtypes": stored, "blocks": blocks,
                       "scales used to de-quantize": list(by_weight.values()),
                       "activation scales (not compared)": act}


def _refuse_declared(ck: Checkpoint, method: str | None) -> None:
    """A declared quantization whose weights stay packed (integer matrices) or quantized (FP8 without a scale)."""
    if method is None:
        return
    for t in ck.tensors.values():
        if t.dtype in FP8_DTYPES or t.is_quantized:
            raise CheckpointError(f"{ck.path}: config.json declares {method} quantization and tensor {t.name} is "
                                  f"stored as {t.dtype} with no scale tensor beside it ({t.name}_scale_inv or "
                                  f"{t.name}_scale); re-save the checkpoint whole or de-quantized (bf16/fp32)")
        if not t.is_float and len(t.shape) >= 2:
            raise CheckpointError(f"{ck.path}: config.json declares {method} quantization and tensor {t.name} is "
                                  f"stored as {t.dtype}; updelta measures full-precision weights: compare "
                                  f"de-quantized (bf16/fp32) checkpoints")
