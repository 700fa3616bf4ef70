"""Block reader of a quantized weight's float32 values (`io.locations.Dequant`; docs/quantized.md).

`DequantReader` reads the stored codes of elements [start, start+count) and the (small) scale tensor once,
decodes the codes exactly by table and multiplies each row segment by its blocks' scales in float32. Which
checkpoints get de-quantized locations is decided in `io.quantized`.
"""
from __future__ import annotations

import math

import numpy as np

from updelta.io.locations import Dequant

_TABLES: dict[str, np.ndarray] = {}


def _table(dtype: str) -> np.ndarray:
    """The float32 value of each of the 256 codes of a one-byte float dtype (exact: every such value is a float32)."""
    t = _TABLES.get(dtype)
    if t is None:
        import torch  # torch: kept out of torch-free paths

        t = _TABLES[dtype] = torch.arange(256, dtype=torch.uint8).view(getattr(torch, dtype)).float().numpy()
    return t


def _widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw storage of a scale tensor (bf16 as uint16 bits, one-byte floats as uint8) as float32, exactly."""
    if dtype == "float32":
        return raw.astype(np.float32)
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "float16":
        return raw.astype(np.float32)
    return _table(dtype)[raw]


class DequantReader:
    """Block reader of float32 values of a quantized weight: element (i, j) of each stored [out, in] matrix is
    `value(code) * scale[i // block[0], j // block[1]]`, the product rounded to float32 once."""

    def __init__(self, stored, scale, dq: Dequant):
        """`stored`, `scale`: block readers (anything with `read(start, count, out)` of raw storage)."""
        self.stored, self.table = stored, _table(dq.dtype)
        *lead, self.rows, self.cols = dq.shape
        self.bo, self.bi = dq.block
        self.nbo, self.nbi = -(-self.rows // self.bo), -(-self.cols // self.bi)
        n = math.prod(lead) * self.nbo * self.nbi
        # one row of scales per (matrix, row block): [lead * nbo, nbi]
        self.scale = _widen(np.array(scale.read(0, n)), dq.scale.dtype).reshape(-1, self.nbi)
        self.codes: np.ndarray | None = None
        self._cs = (-1, None)

    def _col_scales(self, srow: int) -> np.ndarray:
        """The scale of every column of the rows of scale row `srow` (matrix, row block), as one float32 row."""
        if self._cs[0] != srow:
            self._cs = (srow, np.repeat(self.scale[srow], self.bi)[:self.cols])
        return self._cs[1]

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        nbytes = count * 4
        if out is None or out.nbytes < nbytes:
            out = np.empty(nbytes, dtype=np.uint8)
        vals = out[:nbytes].view(np.float32)
        if self.codes is None or self.codes.nbytes < count:
            self.codes = np.empty(count, dtype=np.uint8)
        codes = self.stored.read(start, count, self.codes)
        np.take(self.table, codes, out=vals)
        pos, end, cols = start, start + count, self.cols
        while pos < end:  # one stretch of rows sharing a scale row (the same matrix and row block) at a time
            r = pos // cols
            m, i = divmod(r, self.rows)
            srow = m * self.nbo + i // self.bo
            stop = min(end, (m * self.rows + min((i // self.bo + 1) * self.bo, self.rows)) * cols)
            seg, cs = vals[pos - start:stop - start], self._col_scales(srow)
            c0 = pos - r * cols
            head = min(cols - c0, seg.size) if c0 else 0
            if head:
                seg[:head] *= cs[c0:c0 + head]
            body = seg[head:]
            full = body.size // cols
            if full:
                body[:full * cols].reshape(full, cols)[...] *= cs
            tail = body[full * cols:]
            if tail.size:
                tail *= cs[:tail.size]
            pos = stop
        return vals
