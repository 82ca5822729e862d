"""A self-contained HTML page: sections of text, tables and pictures, nothing fetched.

The report must open from a laptop, a cluster's file browser or an e-mail attachment, so
pictures are embedded as data URIs and the only script (sorting a table by a column
when its header is clicked) is inline. Tables are pandas' ``to_html``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
th { background: #f3f3f3; } table.sortable th { cursor: pointer; }
td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ccc; } figcaption { font-size: .85em; color: #555; }
.headline { font-size: 1.2em; background: #eef6ee; padding: .6em 1em; border-left: 4px solid #4a4; }
.scroll { max-height: 32em; overflow: auto; } pre { background: #f6f6f6; padding: 1em; overflow: auto; }
"""

#: Sorts a table.sortable by the clicked column: numbers as numbers, blanks last; again: reversed.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var up = th.dataset.order !== "asc"; th.dataset.order = up ? "asc" : "desc";
    var key = function (row) { var t = row.cells[col].textContent.trim(), n = parseFloat(t);
      return t === "" || t === "NaN" ? null : (isNaN(n) ? t : n); };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null) return 1; if (y === null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def escape(text: object) -> str:
    return html.escape(str(text))


def page(title: str, body: Sequence[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + f"\n<script>{SORT_SCRIPT}</script>\n"
            "</body></html>\n")


def section(title: str, anchor: str, parts: Sequence[str]) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


def paragraph(text: str, cls: str | None = None) -> str:
    return f'<p class="{cls}">{escape(text)}</p>' if cls else f"<p>{escape(text)}</p>"


def table(df: pd.DataFrame, table_id: str, sortable: bool = True, scroll: bool = False) -> str:
    """A DataFrame as an HTML table (numbers to 4 significant digits; ``sortable`` by its headers)."""
    classes = ["data"] + (["sortable"] if sortable else [])
    text = df.to_html(index=False, table_id=table_id, classes=classes, border=0, na_rep="",
                      float_format=lambda v: f"{v:.4g}")
    return f'<div class="scroll">{text}</div>' if scroll else text


def vertical(row: pd.Series | dict, table_id: str) -> str:
    """One row (e.g. summary.csv) as a two-column table of name and value."""
    items = row.items() if isinstance(row, dict) else row.to_dict().items()
    df = pd.DataFrame([{"figure": k, "value": _value(v)} for k, v in items])
    return table(df, table_id, sortable=False)


def figure(png: str | Path | bytes, caption: str, alt: str) -> str:
    """A PNG embedded as a data URI, with its caption."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{escape(alt)}"><figcaption>{escape(caption)}</figcaption>'
            "</figure>")


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def _value(v: object) -> str:
    if isinstance(v, float | np.floating):
        return "" if np.isnan(v) else f"{float(v):.4g}"
    return str(v)
