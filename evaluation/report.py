"""`sslkit report`: one self-contained HTML page for a run: its config, training curves, every
evaluation JSON as a table and every picture, images inlined as base64 (no network, no server)."""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from sslkit.engine.outputs import check_links
from sslkit.errors import CheckpointError
from sslkit.files import write_text_atomic

SKIP_DIRS = {"cache", "tb", "projector", "checkpoints"}  # feature caches, TensorBoard files
MAX_LIST = 12  # list items shown in a cell before "... (N items)"

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em;max-height:30em}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#555;font-size:.85em}
.meta{color:#666;font-size:.85em}
"""


def run_directory(path: str) -> Path:
    """The run directory of `checkpoint=`: a run directory, or a checkpoint file inside one."""
    from sslkit.engine.checkpoint import locate, run_dir_of

    p = Path(path).expanduser()
    run = p if p.is_dir() else run_dir_of(locate(p))  # a missing last.pt: its prev.pt's run
    if not (run / "config.yaml").is_file() and not (run / "metrics.jsonl").is_file():
        raise CheckpointError(f"{run} is not an sslkit run directory (no config.yaml or metrics.jsonl)")
    return run


#: a file larger than this is listed, not inlined (a run's JSON and PNGs are KBs to a few MB)
MAX_INLINE_BYTES = 32 << 20


def _files(run: Path, pattern: str) -> list[Path]:
    """The run's files matching `pattern`, outside SKIP_DIRS; a file (or a link) that resolves outside the
    run directory is left out: a downloaded run cannot make the page inline ~/.ssh or /etc."""
    root = run.resolve()
    return sorted(p for p in run.rglob(pattern) if not SKIP_DIRS & set(p.relative_to(run).parts[:-1])
                  and p.is_file() and p.resolve().is_relative_to(root))


def _too_big(path: Path) -> str | None:
    size = path.stat().st_size
    return f"not inlined: {size} bytes, over {MAX_INLINE_BYTES >> 20} MiB" if size > MAX_INLINE_BYTES else None


def _img(path: Path, caption: str) -> str:
    big = _too_big(path)
    if big:
        return f"<p>{html.escape(caption)}: {big}</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.6g}"
    if value is None:
        return "—"
    return html.escape(str(value))


def _cell(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(_cell(v) for v in value[:MAX_LIST])
        more = f", … ({len(value)} items)" if len(value) > MAX_LIST else ""
        return f"[{shown}{more}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{html.escape(str(k))}: {_cell(v)}" for k, v in value.items()) + "}"
    return _scalar(value)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested objects as (dotted key, leaf) rows; lists stay leaves."""
    if isinstance(value, dict) and value:
        rows: list[tuple[str, Any]] = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    return [(prefix, value)]


def _records_table(rows: list[dict[str, Any]]) -> str:
    """A list of objects as one table: a column per (flattened) key."""
    flat = [dict(_flatten(r)) for r in rows]
    cols: list[str] = []
    for r in flat:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_td(r.get(c)) for c in cols) + "</tr>" for r in flat)
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(value: Any) -> str:
    num = isinstance(value, int | float) and not isinstance(value, bool)
    return f'<td class="num">{_cell(value)}</td>' if num else f"<td>{_cell(value)}</td>"


def json_tables(value: Any) -> str:
    """Any JSON value as HTML tables: objects as key/value rows (lists of objects as their own
    tables below), lists of objects as one table, anything else as one cell."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _records_table(value)
    if not isinstance(value, dict):
        return f"<table><tr>{_td(value)}</tr></table>"
    rows, nested = [], []
    for key, leaf in _flatten(value):
        if isinstance(leaf, list) and leaf and all(isinstance(v, dict) for v in leaf):
            nested.append(f"<h4>{html.escape(key)}</h4>{_records_table(leaf)}")
        else:
            rows.append(f"<tr><th>{html.escape(key)}</th>{_td(leaf)}</tr>")
    return f"<table>{''.join(rows)}</table>" + "".join(nested)


def build_report(run: Path) -> tuple[str, dict[str, int]]:
    """The page's HTML and what it holds ({"evaluations": n, "pictures": n})."""
    from .plots import plot_training

    parts = [f"<h1>sslkit run: {html.escape(run.name)}</h1>",
             f'<p class="meta">{html.escape(str(run.resolve()))} · report written '
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p>"]
    check_links(run)  # the page, training.png: never written through a link out of the run directory
    if run / "metrics.jsonl" in _files(run, "metrics.jsonl"):
        plot_training(run)  # fresh curves, also for runs trained before training.png existed
    pictures = 0
    parts.append("<h2>Training</h2>")
    if run / "training.png" in _files(run, "training.png"):
        parts.append(_img(run / "training.png", "training curves (metrics.jsonl)"))
        pictures += 1
    else:
        parts.append("<p>No metrics.jsonl in this run.</p>")
    evaluations = _files(run, "*.json")
    parts.append("<h2>Evaluations</h2>")
    if not evaluations:
        parts.append("<p>No evaluation results yet: run <code>sslkit eval knn checkpoint=…</code>.</p>")
    for path in evaluations:
        title = f"<h3>{html.escape(str(path.relative_to(run)))}</h3>"
        try:
            big = _too_big(path)
            if big:
                raise ValueError(big)
            table = json_tables(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested past the stack
            parts.append(f"{title}<p>unreadable: {html.escape(' '.join(str(exc).split())[:300])}</p>")
            continue
        parts.append(title + table)
    others = [p for p in _files(run, "*.png") if p != run / "training.png"]
    parts.append("<h2>Pictures</h2>")
    if not others:
        parts.append("<p>None yet: <code>sslkit eval retrieval</code> and <code>sslkit eval embedding</code> "
                     "draw them.</p>")
    for path in others:
        parts.append(_img(path, str(path.relative_to(run))))
        pictures += 1
    config = run / "config.yaml"
    parts.append("<h2>Resolved config</h2>")
    shown = config in _files(run, "config.yaml") and not _too_big(config)
    parts.append(f"<pre>{html.escape(config.read_text(encoding='utf-8', errors='replace'))}</pre>" if shown
                 else "<p>No config.yaml.</p>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>sslkit report: {html.escape(run.name)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    return page, {"evaluations": len(evaluations), "pictures": pictures}


def write_report(run: Path, out: Path | None = None) -> tuple[Path, dict[str, int]]:
    page, counts = build_report(run)
    path = out or run / "report.html"
    write_text_atomic(page, path)  # a link planted at the path or its temporary name is never written through
    return path, counts
