"""Fuzz the checkpoint readers with damaged files, using the safetensors library as the oracle.

    python benchmarks/fuzz_readers.py --cases 10000 --seed 0      # the full job (a few minutes)
    python benchmarks/fuzz_readers.py --cases 200 --seed 0        # the sample that CI runs (tests/io)
    python benchmarks/fuzz_readers.py --format gguf --cases 10000  # GGUF damage kinds, gguf-py as the oracle

Each case copies a small valid bf16 checkpoint (one file, or two shards with an index) and damages it one way:
mutated header JSON (types swapped, odd offsets, shapes, dtypes, duplicate keys, metadata), a lying length prefix,
truncation, appended bytes, flipped bytes, header padding, a damaged shard index, or a garbage config.json. Then
`updelta.diff(base, damaged)` must give

- a result only where the safetensors library accepts every weight file the reader opened, and then the same
  per-tensor ||W1 - W0||_F as the tensors the library loads (rtol 1e-5);
- otherwise one `UpdeltaError` of one line that names a file;
- never another exception, never a hang (a 10 s alarm per case), and bounded memory (peak RSS printed).

Counts per outcome and mutation kind are printed; the exit code is 1 when any case broke a rule.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

os.environ.setdefault("UPDELTA_PROGRESS", "0")
import updelta  # noqa: E402
from updelta.errors import UpdeltaError  # noqa: E402

KINDS = ("header_json", "length_prefix", "truncate", "append", "flip_header", "flip_data", "pad", "index", "config")
DTYPES = ("F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "F4", "C64", "I64", "bf16", "F31", "")
JUNK = (None, True, False, 0, 1, -1, 2.5, -0.0, 1e30, 2 ** 64, "", "x", "16", [], [1], [1, 2, 3], {}, {"a": 1},
        [0.5, 1.5], ["0", "8"], [-8, 0])


def base_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {"model.embed_tokens.weight": torch.randn(16, 8, generator=g)}
    for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
        sd[f"model.layers.0.self_attn.{m}.weight"] = torch.randn(8, 8, generator=g)
    sd["model.layers.0.mlp.up_proj.weight"] = torch.randn(12, 8, generator=g)
    sd["model.layers.0.input_layernorm.weight"] = 1 + 0.01 * torch.randn(8, generator=g)
    sd["model.norm.weight"] = 1 + 0.01 * torch.randn(8, generator=g)
    return {k: (v * 0.05).to(torch.bfloat16) if v.dim() == 2 else v.to(torch.bfloat16) for k, v in sd.items()}


CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": False}


def write_folder(sd: dict[str, torch.Tensor], folder: Path, shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    if shards == 1:
        save_file(sd, str(folder / "model.safetensors"))
        return folder
    names = list(sd)
    wm = {}
    for i in range(shards):
        part = {n: sd[n] for n in names[i::shards]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(folder / fname))
        wm.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return folder


def split(path: Path) -> tuple[bytes, dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8:8 + n], json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: bytes, data: bytes, n: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def _mutate_entry(rng: random.Random, header: dict) -> str | None:
    """Mutate one field of one tensor entry (or __metadata__) in place; may return raw JSON text instead."""
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    e = header[name]
    op = rng.randrange(14)
    if op == 0:
        e[rng.choice(("dtype", "shape", "data_offsets"))] = rng.choice(JUNK)
    elif op == 1:
        e["dtype"] = rng.choice(DTYPES)
    elif op == 2:
        i = rng.randrange(len(e["shape"]))
        e["shape"][i] = rng.choice((e["shape"][i] + rng.choice((-1, 1, 2)), -e["shape"][i], float(e["shape"][i]),
                                    0, 2 ** 63, 2 ** 64, True))
    elif op == 3:
        e["shape"] = rng.choice(([], [e["shape"][0]], e["shape"] + [1], e["shape"][::-1], [2 ** 32, 2 ** 32]))
    elif op == 4:
        k = rng.choice((1, 2, 3, 4, 8, -2, -1))
        e["data_offsets"] = [e["data_offsets"][0] + k, e["data_offsets"][1] + k]
    elif op == 5:
        i = rng.randrange(2)
        e["data_offsets"][i] += rng.choice((-2, -1, 1, 2, 1000))
    elif op == 6:
        e["data_offsets"] = rng.choice(([str(x) for x in e["data_offsets"]], [float(x) for x in e["data_offsets"]],
                                        e["data_offsets"][::-1], e["data_offsets"] + [0], e["data_offsets"][:1]))
    elif op == 7:
        del e[rng.choice(("dtype", "shape", "data_offsets"))]
    elif op == 8:
        e["extra"] = rng.choice(JUNK)
    elif op == 9:
        header["__metadata__"] = rng.choice(({"format": "pt"}, {"a": 1}, {"a": None}, [], "pt", None, {"a": ["b"]}))
    elif op == 10:  # a second tensor's bytes overlap the first's
        other = rng.choice(names)
        header[other]["data_offsets"] = list(header[name]["data_offsets"])
    elif op == 11:  # duplicate key, as raw text
        text = json.dumps(header)
        dup = json.dumps({name: e})[1:-1]
        return text[:-1] + ", " + dup + "}"
    elif op == 12:
        header[name] = rng.choice(JUNK)
    else:
        text = json.dumps(header)
        return rng.choice((text.replace("]", "", 1), text[:-1], text + "x", "[" + text + "]",
                           text.replace('"F32"', "NaN", 1).replace('"BF16"', "NaN", 1), text.replace("{", "{{", 1),
                           "\ufeff" + text, text.replace('"', '"\\ud800', 1)))
    return None


def damage(rng: random.Random, kind: str, folder: Path) -> None:
    """Damage the checkpoint in `folder` one way (`kind`)."""
    files = sorted(folder.glob("*.safetensors"))
    target = rng.choice(files)
    raw_header, header, data = split(target)
    if kind == "header_json":
        text = None
        for _ in range(rng.choice((1, 1, 2, 3))):
            try:
                text = _mutate_entry(rng, header) or text
            except (KeyError, TypeError, IndexError, AttributeError, ValueError):
                continue  # an earlier mutation removed what this one edits
            if text is not None:
                break
        hb = (text if text is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
        keep_len = rng.random() < 0.2
        target.write_bytes(join(hb, data, len(raw_header) if keep_len else None))
    elif kind == "length_prefix":
        n = len(raw_header)
        size = target.stat().st_size
        lie = rng.choice((0, 1, 7, n - 1, n + 1, n - 2, n + 2, n + 8, size, size - 8, size - 7, 2 ** 63, 2 ** 64 - 1,
                          100_000_001, rng.randrange(0, size + 64)))
        target.write_bytes(join(raw_header, data, lie))
    elif kind == "truncate":
        raw = target.read_bytes()
        target.write_bytes(raw[:rng.randrange(0, len(raw))])
    elif kind == "append":
        target.write_bytes(target.read_bytes() + bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 64)))))
    elif kind in ("flip_header", "flip_data"):
        raw = bytearray(target.read_bytes())
        lo, hi = (0, 8 + len(raw_header)) if kind == "flip_header" else (8 + len(raw_header), len(raw))
        for _ in range(rng.choice((1, 1, 2, 8))):
            i = rng.randrange(lo, hi)
            raw[i] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(raw))
    elif kind == "pad":
        pad = rng.choice((b"  ", b"\n", b"\t\r\n ", b"\x00", b"x", b"\xff", b"  \x00"))
        target.write_bytes(join(raw_header + pad, data))
    elif kind == "index":
        idx = folder / "model.safetensors.index.json"
        obj = json.loads(idx.read_text())
        wm = obj["weight_map"]
        name = rng.choice(list(wm))
        op = rng.randrange(10)
        if op == 0:
            wm[name] = rng.choice((None, 3, 2.5, [], {}, True))
        elif op == 1:
            wm[name] = rng.choice(("../model.safetensors", "/etc/hostname", "sub/x.safetensors", "", ".", "..",
                                   "missing.safetensors", "config.json"))
        elif op == 2:
            other = [f.name for f in files if f.name != wm[name]]
            wm[name] = other[0]
        elif op == 3:
            del wm[name]
        elif op == 4:
            wm["model.ghost.weight"] = files[0].name
        elif op == 5:
            obj["weight_map"] = rng.choice(({}, [], None, "x", 1, [["a", "b"]]))
        elif op == 6:
            del obj["weight_map"]
        elif op == 7:
            idx.write_bytes(rng.choice((b"", b"{", b"\xff\xfe", b"[]", b"null", b'{"weight_map": NaN}')))
            return
        elif op == 8:  # a shard replaced by a FIFO or a folder: must not be read (and must not hang)
            victim = folder / wm[name]
            victim.unlink()
            if rng.random() < 0.5:
                os.mkfifo(victim)
            else:
                victim.mkdir()
        else:  # a shard as a relative symlink (as in a Hugging Face cache snapshot): valid
            victim = folder / wm[name]
            blobs = folder / "blobs"
            blobs.mkdir(exist_ok=True)
            victim.rename(blobs / victim.name)
            victim.symlink_to(Path("blobs") / victim.name)
        idx.write_text(json.dumps(obj))
    elif kind == "config":
        cfg = folder / "config.json"
        cfg.write_bytes(rng.choice((b"", b"[1, 2]", b'"llama"', b"\xff" * 10, b"{" * 100000, b"[" * 5000 + b"]" * 5000,
                                    b'{"tie_word_embeddings": "yes", "architectures": 5, "text_config": []}',
                                    b'{"model_type": null, "architectures": [null, 3]}', b'{"a": NaN}',
                                    b'{"quantization_config": {"quant_method": "fp8"}}',
                                    b'{"tie_word_embeddings": true}')))
    else:
        raise ValueError(kind)


def oracle_files(folder: Path) -> list[Path]:
    """The weight files the reader opens for this folder (as open_checkpoint resolves layouts)."""
    idx = folder / "model.safetensors.index.json"
    if idx.exists():
        try:
            wm = json.loads(idx.read_text())["weight_map"]
            return sorted({folder / s for s in wm.values()})
        except Exception:
            return []
    return [folder / "model.safetensors"]


def library_accepts(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            list(f.keys())
        return True
    except Exception:
        return False


def library_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    out = {}
    for p in files:
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


@dataclass
class Outcome:
    kind: str
    outcome: str  # measured | refused | VIOLATION-...
    detail: str = ""


def run_case(rng: random.Random, kind: str, base: Path, work: Path, base_sd: dict[str, torch.Tensor]) -> Outcome:
    folder = work / "ft"
    if folder.exists():
        shutil.rmtree(folder)
    write_folder(base_sd, folder, shards=2 if kind == "index" or rng.random() < 0.25 else 1)
    damage(rng, kind, folder)
    files = oracle_files(folder)
    accepted = bool(files) and all(library_accepts(p) for p in files)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        res = updelta.diff(base, folder, spectral="off", progress=False)
    except UpdeltaError as e:
        signal.alarm(0)
        msg = str(e)
        if "\n" in msg or str(work) not in msg:
            return Outcome(kind, "VIOLATION-message", msg[:300])
        return Outcome(kind, "refused", msg.split(":")[-1][:60] if False else "")
    except _Timeout:
        return Outcome(kind, "VIOLATION-hang")
    except Exception as e:  # noqa: BLE001 - any other exception is what this job looks for
        signal.alarm(0)
        return Outcome(kind, "VIOLATION-unhandled", f"{type(e).__name__}: {str(e)[:200]}")
    signal.alarm(0)
    if not accepted:
        return Outcome(kind, "VIOLATION-measured-rejected-file", ", ".join(p.name for p in files))
    lib = library_tensors(files)
    for row in res.tensors.itertuples():
        w1 = lib.get(row.name)
        w0 = base_sd.get(row.name)
        if w1 is None or w0 is None or w1.shape != w0.shape:
            return Outcome(kind, "VIOLATION-wrong-tensor", row.name)
        d = (w1.double() - w0.double())
        d = d[torch.isfinite(d)]
        want = float(torch.sqrt((d * d).sum()))
        if not np.isclose(row.delta_fro, want, rtol=1e-5, atol=1e-12):
            return Outcome(kind, "VIOLATION-wrong-number", f"{row.name}: {row.delta_fro} vs {want}")
    return Outcome(kind, "measured")


def fuzz(cases: int, seed: int, workdir: Path | None = None, progress: bool = True) -> list[Outcome]:
    """Run `cases` seeded cases; returns every outcome."""
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="updelta-fuzz-", dir=workdir))
    try:
        base_sd = base_state()
        base = write_folder(base_sd, tmp / "base")
        outcomes = []
        t0 = time.perf_counter()
        for i in range(cases):
            kind = KINDS[i % len(KINDS)]
            outcomes.append(run_case(rng, kind, base, tmp, base_sd))
            if progress and (i + 1) % 500 == 0:
                print(f"fuzz: {i + 1}/{cases} cases, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return outcomes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- GGUF ------------------------------------------------------------------------------------------------------
# A small GGUF (F32, F16, Q8_0, Q4_0, Q4_K raw blocks; string and number arrays, general.alignment) written by
# gguf-py's GGUFWriter, damaged one way, compared with the intact file by `updelta.diff`. Oracle: gguf-py's own
# `GGUFReader` + `gguf.quants.dequantize`; a file updelta measures must be one the oracle reads, with the same
# tensors and the same ||W1 - W0||_F (rtol 1e-5). The oracle trusts every count, so it only runs on files updelta
# accepted (a lying count could make it allocate without bound).

GGUF_KINDS = ("g_magic", "g_counts", "g_field", "g_tensor_info", "g_truncate", "g_append", "g_flip_header",
              "g_flip_data")
LIES = (0, 1, 2, 3, 4, 7, 8, 9, 12, 24, 31, 32, 33, 99, 255, 256, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 62, 2 ** 63,
        2 ** 64 - 1)


def gguf_base(path: Path) -> Path:
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("fuzz")
    w.add_custom_alignment(32)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_embedding_length(64)
    w.add_token_list([b"<s>", b"a", b"bb", b"ccc", b"\xe2\x96\x81d"])
    w.add_token_scores([0.0, -1.0, -2.0, -3.0, -4.0])
    w.add_tensor("token_embd.weight", (0.05 * rng.standard_normal((8, 64))).astype(np.float16))
    for n, qt, rows in (("blk.0.attn_q.weight", Q.Q8_0, 64), ("blk.0.attn_k.weight", Q.Q4_0, 32)):
        w.add_tensor(n, gguf.quants.quantize((0.05 * rng.standard_normal((rows, 64))).astype(np.float32), qt),
                     raw_dtype=qt)
    raw = rng.integers(0, 256, size=(4, 144), dtype=np.uint8)
    raw[:, 0:4] = np.frombuffer(np.full(8, 0.01, np.float16).tobytes(), np.uint8).reshape(4, 4)
    w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=Q.Q4_K)
    w.add_tensor("blk.0.attn_norm.weight", (1 + 0.1 * rng.standard_normal(64)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gguf_parts(path: Path) -> tuple[list, list, int]:
    """(kv part positions, tensor-info part positions, data start) of the intact file, from gguf-py's reader:
    each a list of (absolute offset, byte size) of every integer part (lengths, counts, types, dims, offsets)."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def parts(field, skip_data_of_strings=True):
        out, pos = [], field.offset
        for part in field.parts:
            if part.dtype != np.uint8 and part.nbytes in (4, 8, 16, 32):  # numbers, not string bytes
                for k in range(0, part.nbytes, part.itemsize):
                    out.append((pos + k, part.itemsize))
            pos += part.nbytes
        return out

    kvs = [parts(f) for name, f in r.fields.items() if not name.startswith("GGUF.")]
    infos = [parts(t.field) for t in r.tensors]
    return kvs, infos, int(r.data_offset)


def gguf_damage(rng: random.Random, kind: str, raw: bytes, layout) -> bytes:
    kvs, infos, data_start = layout
    b = bytearray(raw)

    def lie(pos: int, size: int) -> None:
        fmt = "<I" if size == 4 else "<Q"
        old = struct.unpack(fmt, bytes(b[pos:pos + size]))[0]
        v = rng.choice(LIES + (old + 1, old - 1, old + 32, old * 2, rng.randrange(1 << (8 * size))))
        b[pos:pos + size] = struct.pack(fmt, v % (1 << (8 * size)))

    if kind == "g_magic":
        if rng.random() < 0.5:
            b[0:4] = rng.choice((b"GGUG", b"FUGG", b"\0\0\0\0", b"GGML", b"ggjt"))
        else:
            lie(4, 4)
    elif kind == "g_counts":
        lie(rng.choice((8, 16)), 8)
    elif kind == "g_field":
        lie(*rng.choice(rng.choice(kvs)))
    elif kind == "g_tensor_info":
        lie(*rng.choice(rng.choice(infos)))
    elif kind == "g_truncate":
        del b[rng.randrange(0, len(b)):]
    elif kind == "g_append":
        b += bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 32, 100))))
    elif kind in ("g_flip_header", "g_flip_data"):
        lo, hi = (0, data_start) if kind == "g_flip_header" else (data_start, len(b))
        for _ in range(rng.choice((1, 1, 2, 8))):
            i = rng.randrange(lo, hi)
            b[i] ^= 1 << rng.randrange(8)
    else:
        raise ValueError(kind)
    return bytes(b)


def gguf_oracle(path: Path) -> dict[str, np.ndarray]:
    """Every tensor as gguf-py reads it: de-quantized, or (integer types, which it does not de-quantize) its
    stored integers."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    r = gguf.GGUFReader(str(path))
    ints = (Q.I8, Q.I16, Q.I32, Q.I64)
    return {t.name: (np.asarray(t.data) if t.tensor_type in ints else gguf.quants.dequantize(t.data, t.tensor_type))
            .astype(np.float64).reshape(-1) for t in r.tensors}


def run_gguf_case(rng: random.Random, kind: str, base: Path, work: Path, raw: bytes, layout, want0) -> Outcome:
    target = work / "ft.gguf"
    target.write_bytes(gguf_damage(rng, kind, raw, layout))
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        res = updelta.diff(base, target, spectral="off", progress=False)
    except UpdeltaError as e:
        signal.alarm(0)
        msg = str(e)
        if "\n" in msg or str(work) not in msg:
            return Outcome(kind, "VIOLATION-message", msg[:300])
        return Outcome(kind, "refused")
    except _Timeout:
        return Outcome(kind, "VIOLATION-hang")
    except Exception as e:  # noqa: BLE001 - any other exception is what this job looks for
        signal.alarm(0)
        return Outcome(kind, "VIOLATION-unhandled", f"{type(e).__name__}: {str(e)[:200]}")
    signal.alarm(10)
    try:
        got = gguf_oracle(target)
    except _Timeout:
        return Outcome(kind, "VIOLATION-measured-rejected-file", "oracle hangs")
    except Exception as e:  # noqa: BLE001 - the oracle refuses a file updelta measured
        signal.alarm(0)
        return Outcome(kind, "VIOLATION-measured-rejected-file", f"{type(e).__name__}: {str(e)[:100]}")
    signal.alarm(0)
    run = res.meta["run_order"][0]
    only = set(res.info.pairing.only_in_run.get(run, ()))
    non_float = {n.removesuffix(f" ({run})") for n in res.info.pairing.non_float}  # integer tensors: listed
    if set(res.tensors.name) | only | non_float != set(got):
        return Outcome(kind, "VIOLATION-wrong-tensor", f"{sorted(res.tensors.name)} vs {sorted(got)}")
    for row in res.tensors.itertuples():
        w0, w1 = want0.get(row.name), got[row.name]
        if w0 is None or w0.shape != w1.shape:
            return Outcome(kind, "VIOLATION-wrong-tensor", row.name)
        d = w1 - w0
        d = d[np.isfinite(d)]
        want = float(np.sqrt((d * d).sum()))
        if not np.isclose(row.delta_fro, want, rtol=1e-5, atol=1e-12):
            return Outcome(kind, "VIOLATION-wrong-number", f"{row.name}: {row.delta_fro} vs {want}")
    return Outcome(kind, "measured")


def fuzz_gguf(cases: int, seed: int, workdir: Path | None = None, progress: bool = True) -> list[Outcome]:
    """`cases` seeded GGUF cases (GGUF_KINDS in turn); returns every outcome."""
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="updelta-fuzz-gguf-", dir=workdir))
    try:
        base = gguf_base(tmp / "base.gguf")
        raw, layout, want0 = base.read_bytes(), _gguf_parts(base), gguf_oracle(base)
        outcomes = []
        t0 = time.perf_counter()
        for i in range(cases):
            outcomes.append(run_gguf_case(rng, GGUF_KINDS[i % len(GGUF_KINDS)], base, tmp, raw, layout, want0))
            if progress and (i + 1) % 500 == 0:
                print(f"fuzz: {i + 1}/{cases} cases, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return outcomes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=("safetensors", "gguf"), default="safetensors",
                    help="which reader to fuzz (gguf: GGUF_KINDS, oracle gguf-py)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    outcomes = (fuzz_gguf if args.format == "gguf" else fuzz)(args.cases, args.seed)
    kinds = GGUF_KINDS if args.format == "gguf" else KINDS
    secs = time.perf_counter() - t0
    by = Counter((o.kind, o.outcome) for o in outcomes)
    total = Counter(o.outcome for o in outcomes)
    print(f"{args.cases} {args.format} cases (seed {args.seed}) in {secs:.0f} s; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"{'kind':<14} {'measured':>9} {'refused':>8} {'violations':>10}")
    for k in kinds:
        v = sum(n for (kk, o), n in by.items() if kk == k and o.startswith("VIOLATION"))
        print(f"{k:<14} {by[(k, 'measured')]:>9} {by[(k, 'refused')]:>8} {v:>10}")
    print("totals:", dict(total))
    bad = [o for o in outcomes if o.outcome.startswith("VIOLATION")]
    for o in bad[:20]:
        print(f"  {o.kind}: {o.outcome} {o.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
