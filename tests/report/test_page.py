"""The report page at real scale (7 runs x 30 layers, 2 unchanged), read top-down: contents, summary first with the
gates column in view, unchanged runs flagged; in headless Chromium at 1400 px no sideways scroll and a page at most
12,000 px tall (skipped, saying why, only where no Chromium is installed)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from scale_tables import RUNS, result
from updelta.report import write_report
from updelta.report.html import png_size

WIDTH, MAX_HEIGHT = 1400, 12000
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MEASURE = """<script>window.addEventListener('load', function () {
  var d = document.documentElement, s = document.querySelector('table.fit');
  var o = document.createElement('pre'); o.id = 'updelta-measure';
  o.textContent = JSON.stringify({width: d.scrollWidth, height: d.scrollHeight,
    summary: s ? [s.scrollWidth, s.getBoundingClientRect().right] : null,
    wide: Array.from(document.querySelectorAll('table')).filter(function (t) {
      return t.getBoundingClientRect().right > window.innerWidth; }).length});
  document.body.appendChild(o); });</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    runs = RUNS[7]
    evals = {r: {"before": {"target_id": 0.5, "retention": 0.8},
                 "after": {"target_id": 0.5 + 0.04 * i, "retention": 0.8 - 0.01 * i}} for i, r in enumerate(runs)}
    out = tmp_path_factory.mktemp("page") / "report"
    outcome = write_report(result(runs, 30), out, evals=evals,
                           gates=["rel_delta<=0.001", "sparsity_atol>=0.25@sft*"])
    return out, outcome


def test_page_order_contents_and_unchanged_runs(report):
    out, outcome = report
    md = (out / "report.md").read_text()
    order = ["## Summary", "## Gates", "## Findings", "## Per layer", "## Figures", "## Provenance"]
    pos = [md.index(h) for h in order]
    assert pos == sorted(pos)
    assert md.index("**Contents:**") < pos[0] and "[Gates](#gates)" in md
    summary = md[pos[0]:pos[1]]
    assert summary.count("(unchanged)") == 2 and "bit-identical to the base" in summary
    assert re.search(r"\| gates +\|", summary) and "FAIL" in summary
    html = (out / "report.html").read_text()
    assert '<nav class="toc">' in html and 'class="fit"' in html and 'tr class="unchanged"' in html
    for f in outcome.figures:  # every figure within 3000 px, its size written into the page
        w, h = png_size((out / f).read_bytes())
        assert max(w, h) <= 3000, (f, w, h)
        assert f'width="{w}" height="{h}"' in html


def _browser() -> str:
    for b in BROWSERS:
        if shutil.which(b):
            return shutil.which(b)
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it): the page "
                "width and height are measured in a real browser")


def test_page_fits_1400_px_in_chromium(report, tmp_path):
    out, _ = report
    browser = _browser()
    page = out / "report.html"
    probe = tmp_path / "probe.html"  # the report with a measuring script, beside its figures folder
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    shutil.copytree(out / "figures", tmp_path / "figures")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},1000"]
    run = subprocess.run(flags + ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120)
    m = re.search(r'<pre id="updelta-measure">(.*?)</pre>', run.stdout)
    assert m, run.stderr[-2000:]
    got = json.loads(m.group(1))
    assert got["width"] <= WIDTH, got  # no horizontal scroll
    assert got["summary"][0] <= got["summary"][1] <= WIDTH, got  # the summary (its gates column too) in view
    assert got["wide"] == 0, got
    assert got["height"] <= MAX_HEIGHT, got
    shot = tmp_path / "report.png"
    subprocess.run(flags[:-1] + [f"--window-size={WIDTH},{got['height']}", f"--screenshot={shot}", probe.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and png_size(shot.read_bytes())[0] == WIDTH
