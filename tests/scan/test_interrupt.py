"""Ctrl-C during a running `updelta diff`: one line, exit code 130, no output file, no temporary file left."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import ckpt


def _wait_until_reading(proc: subprocess.Popen, path: Path, timeout: float = 60.0) -> None:
    """Block until `proc` has `path` open (it is past start-up and streaming tensors)."""
    deadline = time.monotonic() + timeout
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    target = str(path.resolve())
    while time.monotonic() < deadline:
        try:
            if any(os.readlink(fd_dir / fd) == target for fd in os.listdir(fd_dir)):
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"updelta ended before reading: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("updelta never opened the checkpoint")


def test_sigint_during_diff(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(1024, 1024, generator=g) for i in range(12)}
    ft = {k: v + 1e-2 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    b = ckpt.save(base, tmp_path / "base")
    f = ckpt.save(ft, tmp_path / "ft")
    out = tmp_path / "out" / "res.parquet"
    out.parent.mkdir()
    env = {**os.environ, "UPDELTA_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "updelta.cli", "diff", str(b), str(f), "--out", str(out),
                             "--spectral", "full"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    _wait_until_reading(proc, f / "model.safetensors")
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert stderr == "updelta: interrupted\n" and stdout == ""
    assert list(out.parent.iterdir()) == []
    assert time.monotonic() - t0 < 20


def test_sigint_at_start_up_is_one_line_too(tmp_path):
    """An interrupt while the command is still importing its modules: the same one line and exit code."""
    base = ckpt.save({"w": torch.ones(4, 4)}, tmp_path / "b.safetensors")
    env = {**os.environ, "UPDELTA_PROGRESS": "0"}
    for delay in (0.3, 0.8):
        proc = subprocess.Popen([sys.executable, "-m", "updelta.cli", "diff", str(base), str(base)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        if proc.returncode == 0:  # it finished first (a fast machine): nothing to check
            continue
        assert (proc.returncode, stderr, stdout) == (130, "updelta: interrupted\n", ""), delay
