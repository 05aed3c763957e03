"""`lt-sweep report EXPERIMENT --html`: one self-contained page that opens offline.

The page holds:
- the breakdown table;
- the sweep figure and one panel per configuration, each a PNG embedded as a data URI;
- the notes on how to read the table;
- the study of each sweep (its resolved YAML, from the parent run).

No script, stylesheet, font or image is fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from lt_core.metrics import TICKET
from sweeps.report import Report

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
.note { color: #555; font-size: 0.9em; }
"""


def _figure(path: Path, alt: str) -> str:
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table(report: Report) -> str:
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in report.header()) + "</tr>"]
    for config in report.configurations:
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in report.cells(config))
                    + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def html_page(report: Report, studies: dict[str, str]) -> str:
    """The page for ``report``; ``studies``: sweep name -> its resolved study YAML."""
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        sweep = _figure(report.plot(folder / "breakdown.png"),
                        f"{report.metric} against weights remaining, per configuration")
        panels = _figure(report.panels(folder / "panels.png"),
                         "one panel per configuration: ticket and controls")
        drawn = report.instability_plot(folder / "instability.png")
        stability = "" if drawn is None else (
            "<h2>Instability</h2>\n" + _figure(drawn, "accuracy and error barrier against "
                                              "weights remaining, per configuration"))
    notes = report.table().splitlines()[len(report.configurations) + 2:]
    study_blocks = "\n".join(
        f"<h3>{html.escape(name)}</h3>\n<pre>{html.escape(text)}</pre>"
        for name, text in studies.items()) or "<p class=note>(no study recorded)</p>"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{report.experiment}: where tickets break down"
    controls = ", ".join(n for n in report.networks if n != TICKET) or "none"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class=note>Breakdown sparsity (%): where {html.escape(report.metric)} falls
{report.tolerance_pp:g} percentage points below the dense network's. Controls:
{html.escape(controls)}. Written {when} from the MLflow store
{html.escape(report.tracking_uri)}.</p>
<h2>Breakdown</h2>
{_table(report)}
{"".join(f"<p class=note>{html.escape(line)}</p>" for line in notes)}
<h2>Accuracy against weights remaining</h2>
{sweep}
<h2>Per configuration</h2>
{panels}
{stability}
<h2>Study</h2>
{study_blocks}
</body>
</html>
"""


def write_html(report: Report, studies: dict[str, str], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(report, studies), encoding="utf-8")
    return path
