"""Pictures for people: grids of scenes with boxes drawn on them, and figures (line plots, the count confusion).

The image grids (:func:`draw_scene_grid`, :func:`draw_inference`, :func:`draw_overlay`, :func:`draw_image_table`)
are drawn with Pillow: they show the model's pixels enlarged by a whole factor, nearest neighbour, with box
outlines on exact pixels, which a plotting library would resample and pad. The figures (:func:`line_plot`,
:func:`line_panels`, :func:`draw_confusion`) are drawn with matplotlib on its Agg canvas, so no display is
needed, and each is written as a PNG and an SVG beside it (same name, ``.svg``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data.scene import real_box_rows
from .errors import InputError

#: One colour per box index (slot 0 red, slot 1 green, ...), repeating when there are more boxes.
DEFAULT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)

_PAD = 2  # pixels between cells
_CAPTION_HEIGHT = 12


def _as_grey_uint8(images) -> np.ndarray:
    """(N,H,W) uint8 from uint8 (0..255) or float (0..1) images, (N,H,W) or (N,1,H,W), numpy or torch."""
    if hasattr(images, "detach"):  # a torch tensor: no torch import needed here
        images = images.detach().cpu().numpy()
    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise InputError(f"images must be (N,H,W) or (N,1,H,W), got shape {a.shape}")
    if len(a) == 0:
        raise InputError("no images to draw")
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        return (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.dtype.kind in "iub":
        return np.clip(a, 0, 255).astype(np.uint8)
    raise InputError(f"images must be uint8 or float, got {a.dtype}")


def _valid_boxes(b) -> list[tuple[int, np.ndarray]]:
    """``(row index, box)`` for the boxes of one image, skipping padding rows (any negative or non-finite
    coordinate). The row index is kept so a box keeps its slot's colour even when earlier rows are padding."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4) if np.size(b) else np.zeros((0, 4))
    return [(int(j), b[j]) for j in np.flatnonzero(real_box_rows(b))]


def draw_scene_grid(
    images,
    boxes: Sequence[np.ndarray] | np.ndarray | None,
    path: str | os.PathLike,
    ncols: int = 8,
    scale: int = 3,
    colours: Sequence[tuple[int, int, int]] = DEFAULT_COLOURS,
    captions: Sequence[str] | None = None,
    line_width: int = 1,
) -> Path:
    """Write a PNG grid of ``images`` with their ``boxes`` drawn as rectangle outlines; return the path.

    ``images``: (N,H,W) or (N,1,H,W), uint8 0..255 or float 0..1. ``boxes``: per image an (n_i,4) array of
    ``(x_min, y_min, x_max, y_max)`` in image pixels with exclusive max edges (the ``Scenes.boxes`` convention,
    so a ``Scenes.boxes`` (N,K,4) array can be passed as is); rows with a negative or non-finite coordinate are
    padding and skipped; ``None`` draws no boxes. Row ``j`` of every image gets ``colours[j % len(colours)]``,
    so the slot of a box (ground-truth digit or model step) reads the same across the grid. ``captions``: an
    optional short text per image, written under it (e.g. the digit count). Each image is enlarged ``scale``
    times with nearest-neighbour sampling so pixels stay sharp.
    """
    grey = _as_grey_uint8(images)
    n, h, w = grey.shape
    if not isinstance(ncols, int) or ncols < 1:
        raise InputError(f"ncols must be a positive integer, got {ncols!r}")
    if not isinstance(scale, int) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    if not colours:
        raise InputError("colours must not be empty")
    if boxes is not None and len(boxes) != n:
        raise InputError(f"{len(boxes)} box sets for {n} images")
    if captions is not None and len(captions) != n:
        raise InputError(f"{len(captions)} captions for {n} images")

    cell_w, cell_h = w * scale, h * scale
    cap_h = _CAPTION_HEIGHT if captions is not None else 0
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    grid = Image.new("RGB", (_PAD + ncols * (cell_w + _PAD), _PAD + nrows * (cell_h + cap_h + _PAD)), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, ncols)
        x0, y0 = _PAD + c * (cell_w + _PAD), _PAD + r * (cell_h + cap_h + _PAD)
        cell = Image.fromarray(grey[i]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        grid.paste(cell.convert("RGB"), (x0, y0))
        if boxes is not None:
            for j, (bx0, by0, bx1, by1) in _valid_boxes(boxes[i]):
                if bx1 <= bx0 or by1 <= by0:
                    continue
                # Exclusive max edge -> last covered pixel; keep the outline inside the cell.
                rect = [x0 + bx0 * scale, y0 + by0 * scale,
                        x0 + min(bx1 * scale, cell_w) - 1, y0 + min(by1 * scale, cell_h) - 1]
                if rect[2] < rect[0] or rect[3] < rect[1]:  # entirely outside the cell
                    continue
                draw.rectangle(rect, outline=tuple(colours[j % len(colours)]), width=line_width)
        if captions is not None:
            draw.text((x0 + 1, y0 + cell_h), str(captions[i]), fill=(230, 230, 230), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


def draw_inference(images, result, path: str | os.PathLike, true_counts: Sequence[int] | None = None,
                   scale: int = 3) -> Path:
    """What the model found: the input scenes (top row) with each inference step's window in its own
    colour, and the model's reconstructions (bottom row) with the same windows. ``result`` is an
    :class:`~attend_infer_repeat.model.InferenceResult` for ``images``."""
    grey = _as_grey_uint8(images)
    recon = _as_grey_uint8(np.clip(result.reconstruction.numpy(), 0, 1))
    # windows may reach past the image's edge: clip them to it, else one with a negative corner would be
    # taken for padding and not drawn at all
    boxes = result.step_boxes.numpy().clip(0, grey.shape[-1])
    boxes[~result.z_pres.numpy().astype(bool)] = -1  # absent steps: no window
    n = grey.shape[0]
    counts = result.counts.tolist()
    top = [f"found {c}" + (f" (true {t})" if true_counts is not None else "")
           for c, t in zip(counts, true_counts if true_counts is not None else counts)]
    return draw_scene_grid(np.concatenate([grey, recon]), np.concatenate([boxes, boxes]), path, ncols=n,
                           scale=scale, captions=top + ["reconstruction"] * n)


def draw_overlay(pixels, boxes: Sequence[tuple[int, Sequence[float]]], path: str | os.PathLike,
                 min_side: int = 240, line_width: int = 2) -> Path:
    """One image (H, W) at its own size (enlarged by an integer factor so its longer side is at least
    ``min_side`` px) with boxes ``(step, (x_min, y_min, x_max, y_max))`` in its pixels, each in the colour of
    its inference step (step 0 red, 1 green, 2 blue, ...: the colours of :data:`DEFAULT_COLOURS`) and
    labelled with the step number. Boxes may reach past the edge; they are clipped to the picture."""
    grey = _as_grey_uint8(np.asarray(pixels)[None])[0]
    h, w = grey.shape
    scale = max(1, -(-min_side // max(h, w)))
    img = Image.fromarray(grey).resize((w * scale, h * scale), Image.Resampling.NEAREST).convert("RGB")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for step, (x0, y0, x1, y1) in boxes:
        colour = tuple(DEFAULT_COLOURS[step % len(DEFAULT_COLOURS)])
        rect = [max(0, x0 * scale), max(0, y0 * scale), min(w * scale, x1 * scale) - 1,
                min(h * scale, y1 * scale) - 1]
        if rect[2] <= rect[0] or rect[3] <= rect[1]:
            continue
        d.rectangle(rect, outline=colour, width=line_width)
        d.text((rect[0] + 3, rect[1] + 2), str(step + 1), fill=colour, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def draw_image_table(rows: Sequence[Sequence[np.ndarray]], path: str | os.PathLike, scale: int = 3,
                     row_labels: Sequence[str] | None = None, column_labels: Sequence[str] | None = None,
                     borders: Sequence[Sequence[tuple[int, int, int] | None]] | None = None) -> Path:
    """A table of grey images (each (h, w) in [0, 1] or uint8; sizes may differ between columns): one row per
    sequence, columns left to right, each cell enlarged ``scale`` times and placed in a cell as large as the
    largest image of its column. Optional text labels on the left of rows and above columns, and an optional
    coloured border per cell (e.g. the inference step's colour). Used for the step-by-step decomposition,
    prior samples and latent traversals."""
    if not rows or not rows[0]:
        raise InputError("draw_image_table needs at least one image")
    ncols = max(len(r) for r in rows)
    grey_rows = [[_as_grey_uint8(np.asarray(c)[None])[0] for c in r] for r in rows]
    col_w = [max(r[j].shape[1] for r in grey_rows if j < len(r)) * scale for j in range(ncols)]
    row_h = [max(c.shape[0] for c in r) * scale for r in grey_rows]
    font = ImageFont.load_default()
    label_w = (max(len(s) for s in row_labels) * 6 + 8) if row_labels else 0
    head_h = 14 if column_labels else 0
    pad = 4
    width = label_w + pad + sum(cw + pad for cw in col_w)
    height = head_h + pad + sum(rh + pad for rh in row_h)
    img = Image.new("RGB", (width, height), (40, 40, 40))
    d = ImageDraw.Draw(img)
    xs = [label_w + pad + sum(cw + pad for cw in col_w[:j]) for j in range(ncols)]
    if column_labels:
        for j, text in enumerate(column_labels[:ncols]):
            d.text((xs[j], 2), str(text), fill=(230, 230, 230), font=font)
    y = head_h + pad
    for i, r in enumerate(grey_rows):
        if row_labels:
            d.text((4, y + row_h[i] // 2 - 6), str(row_labels[i]), fill=(230, 230, 230), font=font)
        for j, cell in enumerate(r):
            ch, cw = cell.shape
            im = Image.fromarray(cell).resize((cw * scale, ch * scale), Image.Resampling.NEAREST).convert("RGB")
            img.paste(im, (xs[j], y))
            colour = borders[i][j] if borders is not None and j < len(borders[i]) else None
            if colour is not None:
                d.rectangle([xs[j] - 1, y - 1, xs[j] + cw * scale, y + ch * scale], outline=tuple(colour), width=2)
        y += row_h[i] + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


# ============================================================================================================
# Figures (matplotlib, Agg): line plots and the count confusion, each written as PNG and SVG
# ============================================================================================================
#: The report's figures: ``air report`` shows them two to a row in a page body at most 1,100 px wide, so each is
#: about 530 CSS px wide. A figure 5.3 inches wide shown at that width keeps a point at about 1.4 CSS px (9 pt
#: text reads at about 12.5 px), and twice that many pixels in the PNG keep it sharp on high-density screens.
REPORT_FIGSIZE: tuple[float, float] = (5.3, 3.4)
REPORT_DPI = 200

#: Line colours in order (matplotlib's tab10, told apart by most colour-blind readers); the inference-step
#: colours of :data:`DEFAULT_COLOURS` stay for boxes, where a colour means a step.
PLOT_COLOURS: tuple[str, ...] = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                                 "tab:pink", "tab:gray", "tab:olive", "tab:cyan")

_STYLE = {
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8.5, "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5, "figure.titlesize": 10, "legend.framealpha": 0.9, "axes.grid": True,
    "grid.alpha": 0.3,
    # SVG text stays text (searchable, small) and the files are the same bytes for the same figure: no date,
    # fixed ids
    "svg.fonttype": "none", "svg.hashsalt": "attend-infer-repeat",
}

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]
Bands = Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]]


@contextmanager
def _style() -> Iterator[None]:
    """matplotlib's settings for our figures, only while one is drawn or saved (nobody else's plots change)."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def _new_figure(ncols: int, figsize: tuple[float, float], dpi: float, sharey: bool = False):
    """A Figure on its own Agg canvas (no pyplot: no global figure list to leak into, no backend to choose, no
    display) with ``ncols`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0])


def _number(v: float, _pos=None) -> str:
    """An axis label: whole numbers in full with thousands separators (2,500, not 2.5e3 or an offset), others
    with as many decimals as they have (ticks 2.5 apart read -497.5, not a rounded -498), up to six."""
    if abs(v - round(v)) < 1e-9 * max(1.0, abs(v)):
        return f"{int(round(v)):,}"
    if abs(v) < 1e-4:
        return f"{v:.3g}"
    return f"{v:,.6f}".rstrip("0").rstrip(".")


def draw_lines(ax, series: Series, *, xlabel: str = "", ylabel: str = "", title: str = "",
               y_range: tuple[float, float] | None = None, hlines: Sequence[float] = (), hline_label: str = "",
               bands: Bands | None = None, styles: Mapping[str, Mapping[str, Any]] | None = None,
               xlog: bool = False, percent: bool = False, legend_loc: str = "best") -> None:
    """Draw one panel on the matplotlib axes ``ax``: ``series`` maps a legend label to (xs, ys), a line each
    (a marker where there is one point). ``bands`` maps a label to (xs, lo, hi), a shaded band (e.g. the
    worst to the best seed): in its series' colour and legend entry when a series has that label, else on
    its own. ``styles`` maps a label to matplotlib line settings (``linewidth``, ``color``, ``alpha``...).
    Dashed grey ``hlines`` mark reference values (targets, a baseline), with one legend entry
    ``hline_label`` when it is given. ``xlog``: a logarithmic x axis; ``percent``: y values are fractions,
    labelled as percentages."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    bands, styles = bands or {}, styles or {}
    for label, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise InputError(f"series {label!r}: {len(xs)} x values for {len(ys)} y values")
    if not any(len(xs) for xs, _ in series.values()) and not any(len(b[0]) for b in bands.values()):
        raise InputError("line_plot needs at least one point")
    handles, labels = [], []
    k = 0
    for label, (xs, ys) in series.items():
        style = {"color": PLOT_COLOURS[k % len(PLOT_COLOURS)], "linewidth": 1.6,
                 **({"marker": "o", "markersize": 4} if len(xs) == 1 else {}), **styles.get(label, {})}
        k += 1
        (line,) = ax.plot(list(xs), list(ys), label=label, **style)
        handle = line
        if label in bands:
            bx, lo, hi = bands[label]
            handle = (ax.fill_between(list(bx), list(lo), list(hi), color=line.get_color(), alpha=0.2,
                                      linewidth=0), line)
        handles.append(handle)
        labels.append(label)
    for label, (bx, lo, hi) in bands.items():
        if label not in series:
            colour = styles.get(label, {}).get("color", PLOT_COLOURS[k % len(PLOT_COLOURS)])
            handles.append(ax.fill_between(list(bx), list(lo), list(hi), alpha=0.25, linewidth=0, color=colour))
            labels.append(label)
            k += 1
    for v in hlines:
        ax.axhline(v, color="0.4", linestyle="--", linewidth=0.9, zorder=1)
    if hlines and hline_label:
        handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=0.9))
        labels.append(hline_label)
    if xlog:
        ax.set_xscale("log")
        xs_all = sorted({x for xs, _ in series.values() for x in xs} | {x for b in bands.values() for x in b[0]})
        if len(xs_all) <= 8:  # a few budgets or sizes: label exactly those, not the decades between
            ax.xaxis.set_major_locator(FixedLocator(xs_all))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(_number))
    # percentages with the decimals the ticks need (97.5%, 100%), not matplotlib's fixed count for all (97.50%)
    ax.yaxis.set_major_formatter(FuncFormatter((lambda v, _=None: f"{_number(100 * v)}%") if percent else _number))
    if y_range is not None:
        ax.set_ylim(*y_range)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if handles:
        ax.legend(handles, labels, loc=legend_loc)


def line_panels(panels: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "",
                figsize: tuple[float, float] | None = None, dpi: float = REPORT_DPI, sharey: bool = True) -> Path:
    """Panels side by side (each a dict of :func:`draw_lines` arguments, ``series`` among them) written to
    ``path`` (a .png) and an SVG beside it; returns the PNG's path."""
    with _style():
        return save_figure(panels_figure(panels, title, figsize, dpi, sharey), path)


def panels_figure(panels: Sequence[Mapping[str, Any]], title: str = "", figsize: tuple[float, float] | None = None,
                  dpi: float = REPORT_DPI, sharey: bool = True):
    """The matplotlib Figure of :func:`line_panels` (for tests, or to draw more on it before saving)."""
    if not panels:
        raise InputError("a figure needs at least one panel")
    with _style():
        fig, axes = _new_figure(len(panels), figsize or (REPORT_FIGSIZE[0] * len(panels), REPORT_FIGSIZE[1]),
                                dpi, sharey)
        for ax, panel in zip(axes, panels):
            draw_lines(ax, **panel)
        if title:
            fig.suptitle(title)
    return fig


def line_figure(series: Series, xlabel: str = "", ylabel: str = "", title: str = "",
                y_range: tuple[float, float] | None = None, hlines: Sequence[float] = (),
                figsize: tuple[float, float] = REPORT_FIGSIZE, dpi: float = REPORT_DPI, **kwargs):
    """The matplotlib Figure of :func:`line_plot`: one panel, :func:`draw_lines` with these arguments."""
    return panels_figure([dict(series=series, xlabel=xlabel, ylabel=ylabel, title=title, y_range=y_range,
                               hlines=hlines, **kwargs)], figsize=figsize, dpi=dpi)


def line_plot(series: Series, path: str | os.PathLike, xlabel: str = "", ylabel: str = "", title: str = "",
              y_range: tuple[float, float] | None = None, hlines: Sequence[float] = (),
              figsize: tuple[float, float] = REPORT_FIGSIZE, dpi: float = REPORT_DPI, **kwargs) -> Path:
    """A line chart: ``series`` maps a legend label to (xs, ys); dashed ``hlines`` mark targets (e.g. 0.95
    and 0.98 accuracy); further keyword arguments (bands, styles, hline_label, xlog, percent, legend_loc) as
    for :func:`draw_lines`. Written to ``path`` (a .png) and an SVG beside it; returns the PNG's path."""
    with _style():
        return save_figure(line_figure(series, xlabel, ylabel, title, y_range, hlines, figsize, dpi, **kwargs), path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write the matplotlib Figure ``fig`` to ``path`` (a .png, at the figure's dpi) and as an SVG beside it
    (same name, ``.svg``); return the PNG's path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: a figure is written as a PNG (and an SVG beside it): name a file ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _style():
        fig.savefig(path, format="png")
        fig.savefig(path.with_suffix(".svg"), format="svg", metadata={"Date": None})
    return path


def confusion_figure(matrix, figsize: tuple[float, float] = (REPORT_FIGSIZE[0], 4.4), dpi: float = REPORT_DPI):
    """The matplotlib Figure of :func:`draw_confusion`."""
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    plt_blue, plt_red = colormaps["Blues"](0.7), colormaps["Reds"](0.6)
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.size == 0:
        raise InputError(f"a confusion matrix must be square and non-empty, got shape {m.shape}")
    k = m.shape[0]
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    diagonal = np.eye(k, dtype=bool)
    with _style():
        fig, (ax,) = _new_figure(1, figsize, dpi)
        # right and wrong counts in two hues, so a miscount stands out however few scenes it holds; cells fill
        # the axes (not square) so the layout leaves room for the labels and the legend below
        ax.imshow(np.ma.masked_where(~diagonal, share), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        ax.imshow(np.ma.masked_where(diagonal, share), cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
        size = 9 if k <= 6 else 7
        for t in range(k):
            for p in range(k):
                ax.text(p, t, f"{m[t, p]:,}\n{share[t, p]:.1%}" if m[t, p] else "0", ha="center", va="center",
                        fontsize=size, color="white" if share[t, p] > 0.6 else "black")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(k + 1) - 0.5, minor=True)
        ax.grid(False)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("count found by the model")
        ax.set_ylabel("true count")
        ax.set_title("Count confusion: scenes per cell, and their share of the row")
        ax.legend([Patch(color=plt_blue), Patch(color=plt_red)], ["counted right (diagonal)", "miscounted"],
                  loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return fig


def draw_confusion(matrix, path: str | os.PathLike, figsize: tuple[float, float] = (REPORT_FIGSIZE[0], 4.4),
                   dpi: float = REPORT_DPI) -> Path:
    """A count confusion matrix (rows: true count, columns: found count) as a heat map: each cell labelled
    with its number of scenes and its share of its row (so the diagonal reads as per-count accuracy), shaded
    by that share, blue on the diagonal and red off it. Written to ``path`` (a .png) and an SVG beside it;
    returns the PNG's path."""
    with _style():
        return save_figure(confusion_figure(matrix, figsize, dpi), path)
