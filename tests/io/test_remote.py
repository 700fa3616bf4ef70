"""Remote checkpoints over HTTP range requests, against a loopback server: the same numbers as the local diff of the
same files, headers validated as locally, and a server without range support refused in one line."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import updelta
from updelta.errors import CheckpointError
from updelta.io import open_checkpoint

import ckpt
from clirun import run_main

sys.path.insert(0, str(Path(__file__).parent))
import rangeserver  # noqa: E402

pytest.importorskip("aiohttp")
OPTS = dict(spectral="off", progress=False, block_elems=256)  # small blocks: many range requests per tensor
COLS = ["name", "delta_fro", "base_fro", "sparsity_exact", "sparsity_atol", "cos_delta_base"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, stats, root): a base folder, a sharded fine-tune (3 shards, index, config) and a single file."""
    root = tmp_path_factory.mktemp("www")
    base = ckpt.llama_state()
    ft = ckpt.perturb(base)
    ckpt.save(base, root / "base", config={"model_type": "llama"})
    ckpt.save(ft, root / "ft", shards=3, config={"model_type": "llama"})
    ckpt.save(ft, root / "ft.safetensors")
    with rangeserver.serve(root) as (url, stats):
        yield url, stats, root


def table(res):
    return res.tensors[COLS].sort_values("name").reset_index(drop=True)


def test_a_sharded_remote_folder_diffs_like_the_local_files(served):
    url, stats, root = served
    before = stats["requests"]
    remote = updelta.diff(f"{url}/base", f"{url}/ft", name="ft", **OPTS)
    local = updelta.diff(root / "base", root / "ft", name="ft", **OPTS)
    pd.testing.assert_frame_equal(table(remote), table(local), check_exact=True)
    assert remote.summary["delta_fro"].iloc[0] > 0
    assert remote.meta["runs"]["ft"]["format"] == "safetensors-sharded"
    assert remote.meta["runs"]["ft"]["path"] == f"{url}/ft"
    assert remote.meta["runs"]["ft"]["fingerprint"] == local.meta["runs"]["ft"]["fingerprint"]
    assert remote.meta["pairing"]["family"] == "llama"  # config.json was read remotely
    assert stats["requests"] - before > 40  # range requests per tensor, never one download per file


def test_a_remote_file_reads_every_range(served):
    url, stats, root = served
    sd = ckpt.perturb(ckpt.llama_state())
    with open_checkpoint(f"{url}/ft.safetensors") as ck:
        for name, t in sd.items():
            want = t.reshape(-1).view(torch.int16).numpy().view(np.uint16)
            np.testing.assert_array_equal(ck.tensors[name].read(0, t.numel()), want)
            np.testing.assert_array_equal(ck.tensors[name].read(5, 7), want[5:12])


def test_the_cli_diffs_a_url_against_a_local_folder(served, monkeypatch, capsys):
    url, _, root = served
    code, out, err = run_main(monkeypatch, capsys, "diff", root / "base", f"{url}/ft.safetensors", "--spectral",
                              "off", "--json")
    assert code == 0, err
    assert '"delta_fro"' in out


def _one_line(monkeypatch, capsys, *args):
    code, out, err = run_main(monkeypatch, capsys, "diff", *args, "--spectral", "off")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    return err


def test_a_server_without_range_support(served, monkeypatch, capsys):
    _, _, root = served
    with rangeserver.serve(root, ranges=False) as (url, stats):
        err = _one_line(monkeypatch, capsys, root / "base", f"{url}/ft.safetensors")
        assert f"{url}/ft.safetensors" in err and "range requests" in err and "download it" in err


def test_a_corrupt_remote_header_is_refused_by_the_local_rules(served, monkeypatch, capsys, tmp_path):
    url, _, root = served
    data = bytearray((root / "ft.safetensors").read_bytes())
    (root / "cut.safetensors").write_bytes(bytes(data[:-10]))
    err = _one_line(monkeypatch, capsys, root / "base", f"{url}/cut.safetensors")
    assert "cut.safetensors" in err and "truncated" in err


def test_a_missing_url_and_a_missing_shard(served, monkeypatch, capsys):
    url, _, root = served
    err = _one_line(monkeypatch, capsys, root / "base", f"{url}/nothing-here")
    assert f"{url}/nothing-here" in err and "no model.safetensors.index.json or model.safetensors" in err
    import shutil
    shutil.copytree(root / "ft", root / "ft_missing")
    (root / "ft_missing" / "model-00002-of-00003.safetensors").unlink()
    err = _one_line(monkeypatch, capsys, root / "base", f"{url}/ft_missing")
    assert "model.safetensors.index.json" in err and "model-00002-of-00003.safetensors" in err and "missing" in err


def test_a_remote_location_reopens_in_a_fresh_reader(served):
    """The job's picklable location carries the URL: a reader opened from it alone reads the same bytes."""
    import pickle

    from updelta.io.readers import close_readers, open_reader
    url, _, _ = served
    with open_checkpoint(f"{url}/ft.safetensors") as ck:
        ref = next(iter(ck.tensors.values()))
        loc = pickle.loads(pickle.dumps(ref.location))
        assert loc.format == "remote" and loc.path == f"{url}/ft.safetensors"
        try:
            np.testing.assert_array_equal(open_reader(loc).read(0, ref.numel), ref.read(0, ref.numel))
        finally:
            close_readers()


def test_remote_bin_files_are_refused():
    with pytest.raises(CheckpointError, match="remote .bin/.pt files are not read"):
        open_checkpoint("http://127.0.0.1:9/x/pytorch_model.bin")
