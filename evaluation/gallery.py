"""Pictures of neighbours: a PNG grid and a self-contained HTML page (thumbnails inlined as base64),
one row per query (or per near-duplicate pair), in the style of `sslkit eval retrieval`'s grid."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sslkit.data.imagefolder import decode, resize_center_crop
from sslkit.errors import DataError
from sslkit.files import write_text_atomic

from .plots import save_figure
from .retrieval import frame_axes

#: (first image, [(neighbour image, cosine), ...]) per row
Rows = Sequence[tuple[str, Sequence[tuple[str, float]]]]


def thumbnail(path: str, size: int = 96) -> np.ndarray:
    """The image at `path` as a size x size x 3 uint8 array (grey when it cannot be read)."""
    try:
        return resize_center_crop(decode(path), size).permute(1, 2, 0).numpy()
    except DataError:
        return np.full((size, size, 3), 128, dtype=np.uint8)


#: one picture of a grid: (image path, title, frame colour)
Cell = tuple[str, str, str]


def plot_cells(cells: Sequence[Sequence[Cell]], path: Path, title: str) -> Path:
    """A grid of thumbnails, one row per list of cells, each titled and framed."""
    from matplotlib.figure import Figure

    cols = max((len(r) for r in cells), default=1)
    fig = Figure(figsize=(max(cols * 0.95, 4.0) + 0.2, len(cells) * 1.05 + 0.5), layout="constrained")
    axes = fig.subplots(max(1, len(cells)), cols, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.3})
    for ax in axes.flat:
        ax.set_axis_off()
    for r, row in enumerate(cells):
        for c, (image, caption, color) in enumerate(row):
            ax = axes[r, c]
            ax.set_axis_on()
            ax.imshow(thumbnail(image))
            ax.set_title(caption, fontsize=6, color=color if color != "tab:gray" else "black", pad=2)
            frame_axes(ax, color)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


def plot_rows(rows: Rows, path: Path, title: str) -> Path:
    """Search results: each query framed in blue, then its neighbours titled with their cosine."""
    return plot_cells([[(q, "query", "tab:blue"), *((o, f"{c:.3f}", "tab:gray") for o, c in ns)] for q, ns in rows],
                      path, title)


def plot_pairs(pairs: Sequence[tuple[str, str, float]], path: Path, title: str, per_row: int = 4) -> Path:
    """Near-duplicate pairs, `per_row` to a row: the first image framed in blue, its partner titled with the cosine."""
    cells: list[list[Cell]] = []
    for n, (a, b, cosine) in enumerate(pairs):
        if n % per_row == 0:
            cells.append([])
        cells[-1] += [(a, f"#{n + 1}", "tab:blue"), (b, f"{cosine:.4f}", "tab:gray")]
    return plot_cells(cells, path, title)


def _img(path: str, size: int = 112) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(thumbnail(path, size)).save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}" alt="">'


def write_html(rows: Rows, path: Path, title: str, first: str = "query") -> Path:
    """One table row per grid row: each image with its file path (and cosine), no server or network needed."""
    cells = []
    for image, neighbours in rows:
        tds = [f'<td class="q">{_img(image)}<br>{first}<br><small>{html.escape(image)}</small></td>']
        tds += [f"<td>{_img(o)}<br>{c:.4f}<br><small>{html.escape(o)}</small></td>" for o, c in neighbours]
        cells.append("<tr>" + "".join(tds) + "</tr>")
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td{vertical-align:top;text-align:center;max-width:140px;"
            "word-break:break-all;font-size:11px;padding:4px}td.q{background:#e8f0fb}</style>"
            f"<h1>{html.escape(title)}</h1><table>{''.join(cells)}</table>\n")
    return write_text_atomic(page, path)
