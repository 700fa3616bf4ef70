"""notebooks/explore_layer_heatmaps.ipynb runs top to bottom (so it cannot silently rot) and is committed clean."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_layer_heatmaps.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    pytest.importorskip("ipykernel")
    # No user-level Jupyter/IPython configuration: the "python3" kernel resolves to the spec in this
    # environment (or ipykernel's built-in one), both of which run this interpreter.
    for var, sub in (("JUPYTER_DATA_DIR", "jupyter-data"), ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
                     ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    monkeypatch.setenv("UPDELTA_NOTEBOOK_BASE", "toy")  # the committed toy base, even where SmolLM2 is cached
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "data" in o and "image/png" in o["data"]]
    assert len(images) >= 8, "every plotting cell shows its figure"
    text = "\n".join(o["data"].get("text/plain", "") for o in outputs if "data" in o)
    assert "rel_delta" in text and "sparsity_exact" in text
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "rl_heatmap.png" in streams and "assets/base" in streams  # the toy base by default
    assert list(cwd.iterdir()) == []  # the notebook writes only to its own temporary folder
    assert elapsed < 90, f"notebook took {elapsed:.0f} s; it must stay well under a minute on 2 cores"
    print(f"notebook executed in {elapsed:.1f} s with {sys.executable}", file=sys.stderr)
