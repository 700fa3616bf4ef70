"""Self-contained HTML rendering of a `Document`: inline CSS, PNGs embedded as base64, no external assets."""
from __future__ import annotations

import base64
import html
import re

from .document import Bullets, Details, Document, Heading, Image, Para, Table

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;font-size:14px;
  line-height:1.5;color:#1f2328;max-width:1200px;margin:24px auto;padding:0 24px;background:#fff}
h1{font-size:26px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
h2{font-size:20px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin-top:24px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;background:#f6f8fa;
  padding:1px 4px;border-radius:4px}
table{border-collapse:collapse;margin:8px 0 16px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d0d7de;padding:4px 10px}
td.r,th{white-space:nowrap}
th{background:#f6f8fa;font-weight:600}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fbfcfd}
tr.fail td{background:#ffebe9}
.fail-text,strong.fail{color:#cf222e}
.caption{color:#57606a;font-size:13px}
figure{margin:16px 0}
figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:13px}
details{margin:8px 0}
summary{cursor:pointer;font-weight:600}
ul{padding-left:22px}
li{margin:4px 0}
"""


def inline(s: str) -> str:
    """Escape, then turn `code` and **bold** into tags (FAIL in bold is coloured)."""
    out = html.escape(str(s), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*FAIL\*\*", '<strong class="fail">FAIL</strong>', out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def table(t: Table) -> str:
    al = t.aligns()
    flags = t.flags or [None] * len(t.rows)
    head = "".join(f'<th class="{al[i]}">{inline(h)}</th>' for i, h in enumerate(t.header))
    body = []
    for r, flag in zip(t.rows, flags):
        cls = f' class="{flag}"' if flag else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{al[i]}">{inline(c)}</td>' for i, c in enumerate(r))
                    + "</tr>")
    cap = f'<p class="caption">{inline(t.caption)}</p>' if t.caption else ""
    return f"{cap}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _block(b) -> str:
    if isinstance(b, Heading):
        return f'<h{b.level} id="{_slug(b.text)}">{inline(b.text)}</h{b.level}>'
    if isinstance(b, Para):
        return f"<p>{inline(b.text)}</p>"
    if isinstance(b, Bullets):
        out = []
        for x in b.items:
            head, subs = (x if isinstance(x, tuple) else (x, []))
            inner = ("<ul>" + "".join(f"<li>{inline(y)}</li>" for y in subs) + "</ul>") if subs else ""
            out.append(f"<li>{inline(head)}{inner}</li>")
        return "<ul>" + "".join(out) + "</ul>"
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Image):
        if b.data is not None:
            src = "data:image/png;base64," + base64.b64encode(b.data).decode("ascii")
        else:
            src = html.escape(b.path)
        cap = f"<figcaption>{inline(b.caption)}</figcaption>" if b.caption else ""
        return f'<figure><img src="{src}" alt="{html.escape(b.alt)}">{cap}</figure>'
    if isinstance(b, Details):
        inner = "\n".join(_block(x) for x in b.blocks)
        return f"<details><summary>{inline(b.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {type(b).__name__}")


def render(doc: Document) -> str:
    body = "\n".join(_block(b) for b in doc.blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n<h1>{inline(doc.title)}</h1>\n{body}\n</body></html>\n")
