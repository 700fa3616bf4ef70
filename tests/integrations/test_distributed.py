"""Distributed tracking, on CPU with 2 gloo processes (torch.distributed.run): DDP logs once, on rank 0, the numbers
of `updelta diff`; FSDP2-sharded parameters give the unsharded numbers from all-reduced sums."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import updelta


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes(tmp_path):
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}",
           str(script), str(tmp_path)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == 2 and len(r0["logs"]) == 1 and r1["logs"] == []  # logged once, by rank 0
    e = r0["logs"][0]
    assert e["step"] == 2
    r = updelta.diff(tmp_path / "start", tmp_path / "out" / "checkpoint-2", spectral="off", progress=False)
    for k in ("rel_delta", "delta_fro", "sparsity_exact", "sparsity_atol", "sparsity_rtol"):
        assert math.isclose(e[f"updelta/{k}"], r.summary[k].iloc[0], rel_tol=1e-6), k

    sh = json.loads((tmp_path / "sharded.json").read_text())
    full = {row["name"]: row for row in sh["full"]}
    assert sorted(row["name"] for row in sh["sharded"]) == sorted(full)
    for row in sh["sharded"]:
        ref = full[row["name"]]
        for c in ("n_compared", "n_eq", "n_le_atol", "n_le_rtol", "delta_max"):
            assert row[c] == ref[c], (row["name"], c)
        assert math.isclose(row["rel_delta"], ref["rel_delta"], rel_tol=1e-6)
    assert math.isclose(sh["logs_sharded"]["updelta/rel_delta"], sh["logs_full"]["updelta/rel_delta"], rel_tol=1e-6)
