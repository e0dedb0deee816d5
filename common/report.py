"""The scaffolding every stage's report.html shares: one stylesheet, PNG plots embedded and written beside the
page, escaped tables, and an atomic write of the whole set. Each stage's report module only says what is on
its page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from common.runs import atomic_write_bytes, atomic_write_text

esc = html.escape

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left;font-size:.9em}
th{background:#f3f3f3}.up{color:#1a7f37}.down{color:#cf222e}.big{font-size:1.3em}img{max-width:100%}
pre{background:#f6f8fa;padding:8px;overflow:auto}"""

# Click a header to sort its table by that column (numbers numerically).
SORTABLE = """<script>function sortTable(t,c){const b=t.tBodies[0],r=[...b.rows],asc=t.dataset.c!=c||t.dataset.d!='a';
r.sort((x,y)=>{const a=x.cells[c].innerText,z=y.cells[c].innerText,na=parseFloat(a),nz=parseFloat(z);
const v=(!isNaN(na)&&!isNaN(nz))?na-nz:a.localeCompare(z);return asc?v:-v});r.forEach(x=>b.appendChild(x));t.dataset.c=c;t.dataset.d=asc?'a':'d'}</script>"""


def subplots(*args, **kwargs):
    """matplotlib's subplots on the Agg backend (no display on a server). Labels are data (file names, prompts):
    `$` in them is text, not mathtext."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def png(fig) -> bytes:
    """The figure as PNG bytes, without a timestamp or software tag (same data -> same bytes); closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def img(data: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def table(headers, rows, sortable: bool = False) -> str:
    """An HTML table; every cell is escaped."""
    head = "".join(f"<th>{esc(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    click = " onclick=\"if(event.target.tagName=='TH')sortTable(this,event.target.cellIndex)\"" if sortable else ""
    return f"<table{click}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_page(out_dir: Path, title: str, body: str, images: dict[str, bytes] | None = None) -> Path:
    """report.html (and each PNG beside it) into out_dir, atomically; the title is escaped, the body is HTML."""
    for name, data in (images or {}).items():
        atomic_write_bytes(out_dir / name, data)
    doc = (f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>\n<style>{STYLE}</style>\n'
           f"{SORTABLE}</head><body>\n{body}\n</body></html>\n")
    path = out_dir / "report.html"
    atomic_write_text(path, doc)
    return path
