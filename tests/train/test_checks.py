"""No silent no-ops: a run that changed nothing or had no reward signal says so (eval.json flags, a warning line),
the bf16 half-ULP used by the update budget, and --data records (a bad line is one error naming it)."""
import json

import pytest
import torch
from typer.testing import CliRunner

from updelta.io import open_checkpoint
from updelta.train.checks import half_ulp_bf16
from updelta.train.model import default_base_path
from updelta.train.cli import app


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_half_ulp_bf16_known_values():
    x = torch.tensor([1.0, 0.75, -3.0, 2.0 ** -20])
    # bf16 spacing: 2^-7 on [1, 2), 2^-8 on [0.5, 1), 2^-6 on [2, 4), 2^-27 on [2^-20, 2^-19)
    assert half_ulp_bf16(x).tolist() == [2.0 ** -8, 2.0 ** -9, 2.0 ** -7, 2.0 ** -28]
    # the definition: a change just above half a spacing survives a bf16 round trip, one just below does not
    for v in (1.0, 0.75, 3.0):
        h = float(half_ulp_bf16(torch.tensor([v])))
        assert torch.tensor(v + 1.01 * h).bfloat16().float() != v
        assert torch.tensor(v + 0.99 * h).bfloat16().float() == v


def test_tiny_lr_run_is_flagged_no_update(tmp_path):
    out = tmp_path / "sft"
    result = _invoke("sft", "--quick", "--steps", "2", "--lr", "1e-12", "--eval-items", "4", "--out", out)
    assert result.exit_code == 0, result.output
    ev = json.loads((out / "eval.json").read_text())
    assert ev["no_update"] is True and "no_signal" not in ev and ev["preset"] == "toy" and ev["start"] == "base"
    assert ev["budget"]["steps"] == 2 and ev["budget"]["steps_x_lr"] == pytest.approx(2e-12)
    assert ev["budget"]["share_above_half_bf16_ulp"] == 0.0
    assert "warning:" in result.stderr and "no_update" in result.stderr
    # a real update is not flagged, and its budget says how much of it a bf16 save can show
    out2 = tmp_path / "sft2"
    assert _invoke("sft", "--quick", "--steps", "2", "--eval-items", "4", "--out", out2).exit_code == 0
    ev2 = json.loads((out2 / "eval.json").read_text())
    assert ev2["no_update"] is False and 0 < ev2["budget"]["share_above_half_bf16_ulp"] <= 1
    # base_fingerprint: the identity of the folder each run started from (the base, or a run folder)
    assert ev["base_fingerprint"] == open_checkpoint(default_base_path()).identity()["fingerprint"]
    out3 = tmp_path / "sft3"
    assert _invoke("sft", "--quick", "--steps", "1", "--eval-items", "4", "--base", out2, "--out", out3).exit_code == 0
    ev3 = json.loads((out3 / "eval.json").read_text())
    assert ev3["start"] == "sft" and ev3["base"] == str(out2.resolve())
    assert ev3["base_fingerprint"] == open_checkpoint(out2).identity()["fingerprint"] != ev["base_fingerprint"]


def test_always_zero_reward_is_flagged_no_signal(tmp_path):
    data = tmp_path / "impossible.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "answer": "zzzzzzzzzz"}) + "\n" for i in range(20)))
    out = tmp_path / "grpo"
    result = _invoke("grpo", "--quick", "--data", data, "--eval-items", "4", "--out", out)
    assert result.exit_code == 0, result.output
    ev = json.loads((out / "eval.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["reward_mean"] == 0 and r["signal"] is False for r in log)
    assert ev["no_signal"] is True and ev["no_update"] is True   # zero advantages, no decay: nothing moved
    assert ev["data"] == str(data) and ev["suite_notes"]["data_held_out"] == 2
    assert "no_signal" in result.stderr and "no_update" in result.stderr


@pytest.mark.parametrize("line, needle", [
    ('{"prompt": "1+1="}', "needs 'completion' or 'answer'"),
    ('{"prompt": "", "completion": "2"}', "'prompt' must be a non-empty string"),
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "not JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "ending with an assistant turn"),
])
def test_bad_data_record_is_one_line_naming_it(tmp_path, line, needle):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n\n' + line + "\n")
    result = _invoke("sft", "--quick", "--data", data, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"{data}:3:" in result.stderr and needle in result.stderr
    assert not (tmp_path / "run").exists()


def test_data_run_holds_out_a_tenth_as_target_id(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": f"{i}+1={i + 1}>{i + 1}",
                                        "answer": str(i + 1)}) + "\n" for i in range(30)))
    out = tmp_path / "run"
    assert _invoke("sft", "--quick", "--steps", "2", "--data", data, "--eval-items", "4", "--out", out).exit_code == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["suite_notes"]["data_train"] == 27 and ev["suite_notes"]["data_held_out"] == 3
    assert ev["eval_items"]["target_id"] == 3 and set(ev["after"]) == {"target_id", "target_ood", "knowledge",
                                                                         "retention"}
