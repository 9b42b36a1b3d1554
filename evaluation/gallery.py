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


def plot_rows(rows: Rows, path: Path, title: str, first: str = "query") -> Path:
    """A grid: the row's first image framed in blue, then its neighbours titled with their cosine."""
    from matplotlib.figure import Figure

    cols = 1 + max((len(n) for _, n in rows), default=0)
    fig = Figure(figsize=(cols * 0.95 + 0.2, len(rows) * 1.05 + 0.5), layout="constrained")
    axes = fig.subplots(max(1, len(rows)), cols, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.3})
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (image, neighbours) in enumerate(rows):
        ax = axes[r, 0]
        ax.set_axis_on()
        ax.imshow(thumbnail(image))
        ax.set_title(first, fontsize=6, color="tab:blue", pad=2)
        frame_axes(ax, "tab:blue")
        for c, (other, cosine) in enumerate(neighbours):
            ax = axes[r, c + 1]
            ax.set_axis_on()
            ax.imshow(thumbnail(other))
            ax.set_title(f"{cosine:.3f}", fontsize=6, pad=2)
            frame_axes(ax, "tab:gray")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


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
