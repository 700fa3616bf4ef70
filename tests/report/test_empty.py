"""A result that measured nothing: the gate says so, instead of calling the metric "not numeric"."""
from __future__ import annotations

import pytest

from updelta.errors import UpdeltaError
from updelta.report import write_report
from updelta.tables.result import build_result


def test_gate_on_an_empty_result_says_nothing_was_compared(tmp_path):
    res = build_result([], [], {"run_order": ["sft"]})
    with pytest.raises(UpdeltaError) as e:
        write_report(res, tmp_path / "r", gates=["rel_delta<=0.05"])
    msg = str(e.value)
    assert "nothing was compared" in msg and "not a numeric metric" not in msg and "rel_delta<=0.05" in msg
    assert not (tmp_path / "r").exists()
