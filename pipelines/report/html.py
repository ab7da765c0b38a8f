"""The report page: one self-contained HTML file (inline CSS, PNGs as base64 data URIs, no scripts).

It must open offline, from a copied file, in any browser, so nothing is fetched: no fonts, no
stylesheets, no JavaScript. Each figure also links to its PNG file beside the page for a full-size
view. Table cells carry ``data-row``/``data-key`` attributes so tests and scripts can read the
numbers back without scraping layout.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from typing import Optional, Sequence, Union


@dataclass
class Plot:
    name: str  # file name beside index.html, e.g. "accuracy.png"
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Table:
    columns: Sequence[tuple[str, str]]  # (key, header)
    rows: Sequence[tuple[str, dict[str, str]]]  # (row id, key -> text already formatted)
    caption: str = ""
    numeric: frozenset[str] = frozenset()  # keys right-aligned


@dataclass
class Note:
    text: str


@dataclass
class Pre:
    text: str
    summary: str


Item = Union[Plot, Table, Note, Pre]


@dataclass
class Section:
    id: str
    title: str
    items: list[Item] = field(default_factory=list)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em 4em; color: #222; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; margin: 0.1em 0; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; }
td[data-key="finished"], td[data-key="step"] { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; color: #666; font-size: 0.85em; text-align: left; padding-top: 0.3em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; margin: 0.6em 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _plot(p: Plot) -> str:
    cap = f" {escape(p.caption)}" if p.caption else ""
    return (
        f'<figure id="fig-{escape(p.name.rsplit(".", 1)[0])}">'
        f'<img src="{data_uri(p.png)}" alt="{escape(p.title)}">'
        f'<figcaption><b>{escape(p.title)}.</b>{cap} <a href="{escape(p.name)}">PNG</a></figcaption></figure>'
    )


NUM_CLASS = ' class="num"'


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for _, h in t.columns)
    body = []
    for row_id, cells in t.rows:
        tds = "".join(
            f'<td data-key="{escape(k)}"{NUM_CLASS if k in t.numeric else ""}>{escape(cells.get(k, ""))}</td>'
            for k, _ in t.columns
        )
        body.append(f'<tr data-row="{escape(row_id)}">{tds}</tr>')
    cap = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _item(item: Item) -> str:
    if isinstance(item, Plot):
        return _plot(item)
    if isinstance(item, Table):
        return _table(item)
    if isinstance(item, Note):
        return f'<p class="note">{escape(item.text)}</p>'
    if isinstance(item, Pre):
        return f"<details><summary>{escape(item.summary)}</summary><pre>{escape(item.text)}</pre></details>"
    raise TypeError(f"unknown report item {type(item).__name__}")


def render_page(title: str, meta_lines: Sequence[str], sections: Sequence[Section], notes: Optional[Sequence[str]] = None) -> str:
    """The whole page as a string."""
    nav = " ".join(f'<a href="#{escape(s.id)}">{escape(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        *(f'<p class="meta">{escape(line)}</p>' for line in meta_lines),
        f"<nav>{nav}</nav>",
    ]
    for note in notes or ():
        parts.append(f'<p class="note">{escape(note)}</p>')
    for s in sections:
        parts.append(f'<section id="{escape(s.id)}"><h2>{escape(s.title)}</h2>')
        parts.extend(_item(i) for i in s.items)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
