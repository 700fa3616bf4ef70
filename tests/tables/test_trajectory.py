"""Trajectories: checkpoint discovery and ordering, and planted updates with known consecutive cosines."""
from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

import ckpt
from updelta.errors import UpdeltaError
from updelta.trajectory import find_checkpoints, step_of, trajectory


def rotate(d: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """N with <N, d> = 0 exactly and ||N|| = ||d|| (every tensor here has an even element count)."""
    flat = d.reshape(-1)
    perm = torch.randperm(flat.numel(), generator=g)
    i, j = perm[: flat.numel() // 2], perm[flat.numel() // 2:]
    out = torch.zeros_like(flat)
    out[i], out[j] = flat[j], -flat[i]
    return out.reshape(d.shape)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """fp32 base and checkpoints at steps 5, 10, 20, 40, 80 on a dyadic grid (every delta exact):
    U1 random; U2 = 3 U1 + 4 N (cos 0.6 with U1); U3 = U2 (cos 1); U4 = -U3 (cos -1); U5 = 0."""
    d = tmp_path_factory.mktemp("traj")
    g = torch.Generator().manual_seed(0)
    base = {k: (torch.randint(32, 64, v.shape, generator=g).float() / 64)
            for k, v in ckpt.llama_state(dtype=torch.float32).items()}
    u1 = {k: torch.randint(-4, 5, v.shape, generator=g).float() / 4096 for k, v in base.items()}
    u2 = {k: 3 * v + 4 * rotate(v, g) for k, v in u1.items()}
    ups = [u1, u2, u2, {k: -v for k, v in u2.items()}, {k: torch.zeros_like(v) for k, v in u2.items()}]
    steps = [5, 10, 20, 40, 80]
    cur, ws = base, []
    for s, u in zip(steps, ups):
        cur = {k: cur[k] + u[k] for k in cur}
        ws.append(cur)
        # names that sort wrongly as text (checkpoint-10 < checkpoint-5): order must come from the number
        ckpt.save(cur, d / "out" / f"checkpoint-{s}")
    ckpt.save(base, d / "base")
    return d, base, ws, ups, steps


def flat(sd, keys=None):
    return torch.cat([sd[k].double().reshape(-1) for k in (keys or sd)])


def test_step_numbers_and_discovery(tmp_path):
    assert step_of("out/checkpoint-500") == 500 and step_of("runs/global_step_30/") == 30
    assert step_of("ckpt/step120.safetensors") == 120 and step_of("epoch2-iter7") == 7
    with pytest.raises(UpdeltaError, match="no step number"):
        step_of("final")
    for s in (100, 20, 3):
        (tmp_path / f"checkpoint-{s}").mkdir()
        (tmp_path / f"checkpoint-{s}" / "model.safetensors").write_bytes(b"")
    want = [(3, tmp_path / "checkpoint-3"), (20, tmp_path / "checkpoint-20"), (100, tmp_path / "checkpoint-100")]
    assert find_checkpoints([str(tmp_path / "checkpoint-*")]) == want  # a quoted glob, expanded here
    (tmp_path / "model.safetensors").write_bytes(b"")  # a run folder: final weights beside checkpoint-* folders
    assert find_checkpoints([str(tmp_path)]) == want  # stands for its checkpoint-* folders
    assert find_checkpoints([str(p) for _, p in reversed(want)]) == want
    with pytest.raises(UpdeltaError, match="matches no checkpoint"):
        find_checkpoints([str(tmp_path / "nothing-*")])
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "checkpoint-20").mkdir()
    with pytest.raises(UpdeltaError, match="same step number 20"):
        find_checkpoints([str(tmp_path / "checkpoint-20"), str(tmp_path / "copy" / "checkpoint-20")])


def test_consecutive_update_cosines_known(planted):
    d, base, ws, ups, steps = planted
    t = trajectory(d / "base", [str(d / "out" / "checkpoint-*")], spectral="off")
    m = t.model()
    assert list(m["step"]) == steps
    assert math.isnan(m.loc[0, "cos_prev_update"])
    assert m.loc[1, "cos_prev_update"] == pytest.approx(0.6, abs=1e-12)
    assert m.loc[2, "cos_prev_update"] == pytest.approx(1.0, abs=1e-12)
    assert m.loc[3, "cos_prev_update"] == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(m.loc[4, "cos_prev_update"]) and m.loc[4, "update_fro"] == 0  # identical checkpoint
    w0 = flat(base)
    for k in range(5):
        u = flat(ups[k])
        assert m.loc[k, "update_fro"] == pytest.approx(float(u.norm()), rel=1e-12)
        assert m.loc[k, "update_rel"] == pytest.approx(float(u.norm() / w0.norm()), rel=1e-12)
        dk = flat(ws[k]) - w0  # every metric against the base, per step
        assert m.loc[k, "rel_delta"] == pytest.approx(float(dk.norm() / w0.norm()), rel=1e-12)
        assert m.loc[k, "sparsity_exact"] == pytest.approx(float((dk == 0).double().mean()), abs=1e-12)
        if k:
            dp = flat(ws[k - 1]) - w0
            assert m.loc[k, "cos_delta_prev"] == pytest.approx(float(dp @ dk / (dp.norm() * dk.norm())), abs=1e-12)
    # step 40 brought the weights back to step 10's: the delta against the base is the same
    assert m.loc[3, "rel_delta"] == pytest.approx(m.loc[1, "rel_delta"], rel=1e-12)


def test_levels_agree_with_direct_computation(planted):
    d, base, ws, ups, steps = planted
    t = trajectory(d / "base", [d / "out"], spectral="off")
    tab = t.table
    assert set(tab["level"]) == {"model", "component", "layer", "tensor"}
    keys = [k for k in base if ".mlp." in k]
    comp = tab[(tab["level"] == "component") & (tab["component"] == "mlp")].set_index("step")
    for k in (1, 2):  # per component: flattened over that component's tensors
        a, b = flat(ups[k - 1], keys), flat(ups[k], keys)
        assert comp.loc[steps[k], "cos_prev_update"] == pytest.approx(float(a @ b / (a.norm() * b.norm())),
                                                                      abs=1e-12)
    name = "model.layers.1.self_attn.v_proj.weight"
    ten = tab[(tab["level"] == "tensor") & (tab["name"] == name)].set_index("step")
    a, b = ups[0][name].double().reshape(-1), ups[1][name].double().reshape(-1)
    assert ten.loc[10, "cos_prev_update"] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-12)
    lay = tab[(tab["level"] == "layer") & (tab["layer"] == 0)]
    assert len(lay) == len(steps) and lay["update_fro"].notna().all()


def test_cli_writes_trajectory_parquet(planted, tmp_path, monkeypatch, capsys):
    from clirun import run_main

    d, *_ = planted
    out = tmp_path / "traj"
    code, stdout, err = run_main(monkeypatch, capsys, "trajectory", d / "base", str(d / "out" / "checkpoint-*"),
                                 "--out", out, "--spectral", "off")
    assert code == 0, err
    lines = stdout.splitlines()
    rows = [ln.split()[0] for ln in lines if ln[:1].isdigit()]
    assert rows == ["5", "10", "20", "40", "80"]
    tbl = pq.read_table(out / "trajectory.parquet")
    assert b"updelta" in tbl.schema.metadata
    df = tbl.to_pandas()
    assert {"step", "level", "rel_delta", "update_fro", "cos_prev_update"} <= set(df.columns)
    code, _, err = run_main(monkeypatch, capsys, "trajectory", d / "base", str(tmp_path / "none-*"))
    assert code == 2 and "matches no checkpoint" in err
