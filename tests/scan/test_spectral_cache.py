"""W0's decomposition: computed once per tensor within a command, kept on disk for later commands, keyed by every
byte of the tensor (a changed byte in the middle of a same-size file is never served), safe files, size bound."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import ckpt
import updelta
from updelta.io.decomp_cache import DecompCache
from updelta.metrics import spectral as sp

COLS = ["nss", "principal_cos_u", "principal_cos_v", "intruders", "offprincipal_overlap", "topk_sv", "erank"]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("UPDELTA_SPECTRAL_CACHE_DIR", raising=False)
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "spectral"


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the W0 decomposition."""
    calls = []
    real = sp.base_decomposition

    def spy(w0, opts):
        calls.append(tuple(w0.shape))
        return real(w0, opts)

    monkeypatch.setattr(sp, "base_decomposition", spy)
    return calls


@pytest.fixture(scope="module")
def states():
    base = ckpt.llama_state(layers=1)
    return base, {n: ckpt.perturb(base, frac=f, scale=1e-2, seed=s) for n, f, s in (("a", 0.5, 1), ("b", 0.9, 2))}


def _same(r1, r2):
    t1, t2 = r1.tensors.set_index(["run", "name"]), r2.tensors.set_index(["run", "name"])
    for c in COLS:
        for key, v in t1[c].items():
            w = t2.loc[key, c]
            if v is None or (np.isscalar(v) and pd.isna(v)):
                assert w is None or pd.isna(w), (c, key)
            else:
                assert np.allclose(np.asarray(v, float), np.asarray(w, float), rtol=1e-6, atol=1e-7), (c, key)


def test_shared_within_a_command_and_served_on_the_next(tmp_path, cache_dir, counted, states):
    base, fts = states
    b = ckpt.save(base, tmp_path / "base")
    runs = {n: ckpt.save(sd, tmp_path / n) for n, sd in fts.items()}
    two_d = sum(1 for v in base.values() if v.ndim == 2)
    r1 = updelta.compare(b, runs, spectral="full")
    assert len(counted) == two_d  # once per tensor for both runs
    assert len(list(cache_dir.glob("*.safetensors"))) == two_d
    counted.clear()
    r2 = updelta.compare(b, runs, spectral="full")
    assert counted == []  # every W0 decomposition served from the cache
    _same(r1, r2)
    r3 = updelta.compare(b, runs, spectral="full", cache=False)
    assert len(counted) == two_d
    _same(r1, r3)


def test_a_changed_byte_in_the_middle_is_never_served(tmp_path, cache_dir, counted, states):
    base, fts = states
    b = ckpt.save(base, tmp_path / "base")
    f = ckpt.save(fts["a"], tmp_path / "a")
    updelta.diff(b, f, spectral="full")
    n_entries = len(list(cache_dir.glob("*.safetensors")))
    path = next(b.glob("*.safetensors"))
    data = bytearray(path.read_bytes())
    size = len(data)
    hlen = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + hlen])
    name = "model.layers.0.mlp.up_proj.weight"  # a 2-D tensor in the middle of the file
    lo, hi = header[name]["data_offsets"]
    mid = 8 + hlen + (lo + hi) // 2
    data[mid] ^= 0x01  # an exponent or mantissa bit of one bf16 element: same name, same size
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size
    counted.clear()
    r = updelta.diff(b, f, spectral="full")
    assert len(counted) == 1  # the one changed tensor is decomposed afresh; the others are served
    assert len(list(cache_dir.glob("*.safetensors"))) == n_entries + 1
    _same(r, updelta.diff(b, f, spectral="full", cache=False))


def test_damaged_or_foreign_entries_are_misses(tmp_path):
    c = DecompCache(tmp_path, limit=1 << 20)
    key = "ab" * 32
    c.put(key, {"S": np.arange(3, dtype=np.float32)})
    assert c.get(key)["S"].tolist() == [0, 1, 2]
    c.path(key).write_bytes(b"\x00" * 40)  # damaged
    assert c.get(key) is None and not c.path(key).exists()
    other = "cd" * 32
    c.put(other, {"S": np.ones(2, dtype=np.float32)})
    c.path(other).rename(c.path(key))  # an entry under the wrong name
    assert c.get(key) is None
    with pytest.raises(ValueError):
        c.path("../x")


def test_size_bound_evicts_least_recently_used(tmp_path):
    import os
    import time

    c = DecompCache(tmp_path, limit=3500)
    keys = [f"{i:064x}" for i in range(3)]
    for i, k in enumerate(keys):
        c.put(k, {"S": np.zeros(250, dtype=np.float32)})  # ~1.1 kB each
        os.utime(c.path(k), (time.time() - 100 + i, time.time() - 100 + i))
    c.get(keys[0])  # touched: now the most recent
    c.put("f" * 64, {"S": np.zeros(250, dtype=np.float32)})
    left = {p.stem for p in tmp_path.glob("*.safetensors")}
    assert keys[0] in left and "f" * 64 in left and keys[1] not in left
    assert sum(p.stat().st_size for p in tmp_path.glob("*.safetensors")) <= 3500
