"""The demo's own sections of its report (docs/claims.md): the claims as records and the trade-off table and figure,
added to a report folder that `updelta.report.write_report` has written (before it is installed).

    add_zoo_sections(folder, claims, rows, groups)

- summary.json gains `claims` (one record per claim: `claim_rules.Claim.as_record`: claim, source, kind,
  verdict, threshold, measured, settings, text) and `zoo` (`runs`: `zoo_table.run_rows`, `groups`:
  `zoo_table.group_rows`), and `figures` lists figures/retention_vs_gain.png;
- figures/retention_vs_gain.png: `plot.retention.tradeoff_figure`;
- report.md and report.html end with the trade-off table and its figure (the claims themselves are a table near
  the top of the report: `write_report(..., claims=...)`).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from updelta.atomic import write_text
from updelta.demo.claim_rules import json_safe
from updelta.demo.zoo_table import format_groups

FIGURE = "figures/retention_vs_gain.png"  # the report's own figures/tradeoff.png is gain against update size


def claims_markdown(claims) -> str:
    """The claims as a Markdown table: verdict, claim (published or updelta's prediction), source, threshold, the
    numbers with the runs' settings."""
    lines = ["| verdict | claim | source | threshold | measured (and settings) |", "|---|---|---|---|---|"]
    for c in claims:
        numbers = c.text.rsplit("; threshold: ", 1)[0]
        kind = " (updelta's prediction)" if c.kind == "prediction" else ""
        lines.append("| " + " | ".join(_md(x) for x in (f"**{c.verdict}**", c.claim + kind, c.source,
                                                           c.threshold or "-", numbers)) + " |")
    return "\n".join(lines)


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def sections_markdown(claims, groups) -> str:
    return ("\n## The trade-off: gain, retention and how far each method moved\n\nMean ± std over seeds; s.e. "
            "= the standard error of one run's accuracy change on its evaluation items.\n\n" + format_groups(groups)
            + f"\n\n![Retention change against own-task gain]({FIGURE})\n")


def _html_table(md: str) -> str:
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if not line.startswith("|---")]
    head, body = rows[0], rows[1:]

    def cell(x: str) -> str:
        return html.escape(x.strip().replace("\\|", "|").replace("**", ""))

    return ("<table><thead><tr>" + "".join(f"<th>{cell(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{cell(x)}</td>" for x in r) + "</tr>" for r in body)
            + "</tbody></table>")


def sections_html(claims, groups, png: bytes | None) -> str:
    img = (f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
           f'alt="Retention change against own-task gain"></figure>') if png else ""
    return ("<section><h2>The trade-off: gain, retention and how far each method moved</h2>"
            + _html_table(format_groups(groups)) + img + "</section>\n")


def add_zoo_sections(folder: Path, claims, rows: list[dict], groups: list[dict]) -> None:
    """See the module docstring. `folder` is a report folder written by `write_report`."""
    from updelta.plot.common import savefig  # matplotlib: loaded only when the figure is drawn
    from updelta.plot.retention import tradeoff_figure  # matplotlib: loaded only when the figure is drawn

    folder = Path(folder)
    (folder / "figures").mkdir(exist_ok=True)
    png = None
    if rows:
        savefig(tradeoff_figure(rows), folder / FIGURE)
        png = (folder / FIGURE).read_bytes()
    sj_path = folder / "summary.json"
    sj = json.loads(sj_path.read_text(encoding="utf-8"))
    sj["claims"] = [c.as_record() for c in claims]
    sj["zoo"] = json_safe({"runs": rows, "groups": groups})
    if png is not None and FIGURE not in sj.get("figures", []):
        sj["figures"] = [*sj.get("figures", []), FIGURE]
    write_text(sj_path, json.dumps(sj, indent=1, default=str))
    md = folder / "report.md"
    write_text(md, md.read_text(encoding="utf-8").rstrip("\n") + "\n" + sections_markdown(claims, groups))
    page = folder / "report.html"
    text = page.read_text(encoding="utf-8")
    cut = text.rfind("</body>")
    add = sections_html(claims, groups, png)
    write_text(page, text[:cut] + add + text[cut:] if cut >= 0 else text + add)
