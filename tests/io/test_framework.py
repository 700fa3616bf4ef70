"""Training frameworks' checkpoints: FSDP distributed checkpoints written by torch.distributed.checkpoint read to
the same numbers as safetensors; DeepSpeed ZeRO and verl folders refused in one line naming the converter."""
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

import updelta
from updelta.errors import CheckpointError
from updelta.io import open_checkpoint

import ckpt
from clirun import run_main

DATA = Path(__file__).parent / "data"
OPTS = dict(spectral="off", progress=False)
COLS = ["name", "delta_fro", "base_fro", "sparsity_exact", "sparsity_atol", "cos_delta_base"]


def table(res) -> pd.DataFrame:
    return res.tensors[COLS].sort_values("name").reset_index(drop=True)


def save_dcp(sd, path, extra=None):
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({**sd, **(extra or {})}, checkpoint_id=str(path), no_dist=True)
    return path


def raw(t: torch.Tensor) -> np.ndarray:
    flat = t.reshape(-1)
    return flat.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else flat.numpy()


def test_a_single_process_dcp_diffs_like_safetensors(tmp_path):
    base = ckpt.llama_state()
    ft = ckpt.perturb(base)
    optim = {"optimizer.state.lm_head.weight.exp_avg": torch.ones(40, 16)}  # never compared as a weight
    b = save_dcp(base, tmp_path / "base_dcp", {"step": 3, **optim})
    f = save_dcp(ft, tmp_path / "ft_dcp", {"step": 9, **optim})
    with open_checkpoint(f) as ck:
        assert ck.format == "dcp" and set(ck.tensors) == set(ft)
        for name, t in ft.items():
            np.testing.assert_array_equal(ck.tensors[name].read(0, t.numel()), raw(t))
    by_dcp = updelta.diff(b, f, name="ft", **OPTS)
    local = updelta.diff(ckpt.save(base, tmp_path / "b"), ckpt.save(ft, tmp_path / "f"), name="ft", **OPTS)
    pd.testing.assert_frame_equal(table(by_dcp), table(local), check_exact=True)
    assert by_dcp.summary["delta_fro"].iloc[0] > 0
    mixed = updelta.diff(tmp_path / "b", f, name="ft", **OPTS)  # safetensors base, DCP run
    pd.testing.assert_frame_equal(table(mixed), table(local), check_exact=True)


def test_two_rank_fsdp2_shards_read_across_chunks(tmp_path):
    """A real two-rank save of Shard(0) DTensors (tests/io/data/make_fsdp2_dcp.py): uneven dim-0 chunks in two
    .distcp files; every element range, also those crossing the chunk boundary, reads the planted values."""
    src = load_file(str(DATA / "fsdp2_src.safetensors"))
    with open_checkpoint(DATA / "fsdp2_dcp") as ck:
        assert set(ck.tensors) == set(src)  # the `step` entry is left out
        for name, t in src.items():
            ref, n = raw(t), t.numel()
            ref_t = ck.tensors[name]
            assert ref_t.shape == tuple(t.shape) and ref_t.dtype == str(t.dtype).removeprefix("torch.")
            np.testing.assert_array_equal(ref_t.read(0, n), ref)
            for a, k in ((1, n - 2), (n // 2 - 1, 3), (n - 1, 1)):
                np.testing.assert_array_equal(ref_t.read(a, k), ref[a:a + k])
    ft = {k: (v.float() + 0.01 * torch.arange(v.numel()).reshape(v.shape)).to(v.dtype) for k, v in src.items()}
    got = updelta.diff(DATA / "fsdp2_dcp", ckpt.save(ft, tmp_path / "ft.safetensors"), name="ft", **OPTS)
    want = updelta.diff(DATA / "fsdp2_src.safetensors", tmp_path / "ft.safetensors", name="ft", **OPTS)
    pd.testing.assert_frame_equal(table(got), table(want), check_exact=True)


def _one_line(monkeypatch, capsys, *args):
    code, out, err = run_main(monkeypatch, capsys, "diff", *args, "--spectral", "off")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    return err


def test_a_malicious_metadata_pickle_is_refused_unrun(tmp_path, monkeypatch, capsys):
    d = shutil.copytree(DATA / "fsdp2_dcp", tmp_path / "evil")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    (d / ".metadata").write_bytes(pickle.dumps(Evil()))
    err = _one_line(monkeypatch, capsys, d, DATA / "fsdp2_dcp")
    assert ".metadata" in err and "only DCP metadata classes" in err and not marker.exists()


def test_a_missing_rank_file(tmp_path, monkeypatch, capsys):
    d = shutil.copytree(DATA / "fsdp2_dcp", tmp_path / "ck")
    os.remove(d / "__1_0.distcp")
    err = _one_line(monkeypatch, capsys, d, DATA / "fsdp2_dcp")
    assert "__1_0.distcp" in err and "missing" in err


def test_tensor_parallel_chunks_are_refused_with_the_converter(tmp_path, monkeypatch, capsys):
    d = shutil.copytree(DATA / "fsdp2_dcp", tmp_path / "tp")
    md = dcp.FileSystemReader(str(d)).read_metadata()  # our own test data: the real reader may unpickle it
    tm = md.state_dict_metadata["model.embed_tokens.weight"]
    tm.chunks[1].offsets = torch.Size([0, 2])  # as a column (tensor-parallel) shard would be
    (d / ".metadata").write_bytes(pickle.dumps(md))
    err = _one_line(monkeypatch, capsys, d, DATA / "fsdp2_dcp")
    assert "other than 0" in err and f"dcp_to_torch_save {d} OUT.pt" in err


def test_deepspeed_zero_is_refused_with_zero_to_fp32(tmp_path, monkeypatch, capsys):
    run = tmp_path / "checkpoint-100"
    (run / "global_step100").mkdir(parents=True)
    torch.save({"module": {}}, run / "global_step100" / "mp_rank_00_model_states.pt")
    torch.save({}, run / "global_step100" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (run / "latest").write_text("global_step100")
    (run / "zero_to_fp32.py").write_text("# the script deepspeed writes\n")
    base = ckpt.save(ckpt.llama_state(), tmp_path / "base")
    err = _one_line(monkeypatch, capsys, base, run)
    assert "DeepSpeed ZeRO" in err and f"python {run / 'zero_to_fp32.py'} {run} OUT_DIR" in err
    err = _one_line(monkeypatch, capsys, base, run / "global_step100")
    assert f"zero_to_fp32.py {run} OUT_DIR --safe_serialization -t global_step100" in err


def test_verl_shards_are_refused_with_the_model_merger(tmp_path, monkeypatch, capsys):
    step = tmp_path / "global_step_50"
    (step / "actor" / "huggingface").mkdir(parents=True)
    for r in range(2):
        torch.save({}, step / "actor" / f"model_world_size_2_rank_{r}.pt")
        torch.save({}, step / "actor" / f"optim_world_size_2_rank_{r}.pt")
    base = ckpt.save(ckpt.llama_state(), tmp_path / "base")
    for path in (step, step / "actor"):
        err = _one_line(monkeypatch, capsys, base, path)
        assert (f"python -m verl.model_merger merge --backend fsdp --local_dir {step / 'actor'} --target_dir "
                f"OUT_DIR") in err


def test_a_hf_folder_beside_deepspeed_state_is_read(tmp_path):
    """HF Trainer + ZeRO-3 with gathered weights: model.safetensors at the top is what is read."""
    sd = ckpt.llama_state()
    run = ckpt.save(sd, tmp_path / "checkpoint-5")
    (run / "global_step5").mkdir()
    torch.save({}, run / "global_step5" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (run / "latest").write_text("global_step5")
    with open_checkpoint(run) as ck:
        assert ck.format == "safetensors" and set(ck.tensors) == set(sd)


def test_a_metadata_pickle_of_other_classes_is_refused(tmp_path):
    d = shutil.copytree(DATA / "fsdp2_dcp", tmp_path / "odd")
    (d / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}, "x": Path("y")}))
    with pytest.raises(CheckpointError, match="no state_dict_metadata"):
        open_checkpoint(d)
