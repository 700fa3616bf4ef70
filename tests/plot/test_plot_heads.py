"""`updelta plot --kind heads`: the layer x head heatmap from a saved folder (docs/metrics.md, Where an update sits)."""
import pytest

import ckpt
import updelta
from updelta.commands.plot import make_figure
from updelta.errors import UpdeltaError

CONFIG = {"model_type": "llama", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 4}


def test_heads_heatmap_from_a_saved_folder(tmp_path):
    base = ckpt.llama_state()
    b = ckpt.save(base, tmp_path / "base", config=CONFIG)
    runs = {n: ckpt.save(ckpt.perturb(base, seed=s), tmp_path / n, config=CONFIG) for n, s in (("a", 1), ("b", 2))}
    res = updelta.compare(b, runs, spectral="off")
    back = updelta.load(res.save(tmp_path / "out"))
    fig = make_figure(back, "heads")
    panels = [a for a in fig.axes if a.get_visible() and a.images]
    assert len(panels) == 2 * 4  # runs x (q, k, v, o)
    lim = {tuple(a.images[0].get_clim()) for a in panels}
    assert len(lim) == 1  # one colour scale for every panel
    assert panels[0].images[0].get_array().shape == (2, 4)  # layers x heads
    from updelta.report.document import Document
    from updelta.report.markdown import render
    from updelta.report.where import where_blocks

    text = render(Document("r", where_blocks(back)))
    assert "## Where the update sits" in text and "attention heads" in text and "MLP neurons" in text
    with pytest.raises(UpdeltaError, match="no per-head rows"):
        make_figure(updelta.diff(b / "model.safetensors", runs["a"] / "model.safetensors", spectral="off"), "heads")
