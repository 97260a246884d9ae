"""``air report``: one self-contained HTML page that shows what a trained model learned.

Numbers alone (an accuracy, an ELBO) do not show whether the windows sit on the digits, what each step drew,
or what the generative model imagines. The page shows it: reconstructions with each step's window, the
step-by-step decomposition, training curves, the count confusion matrix, the worst errors, samples from
the prior and a z_what traversal. Every picture is also written as a PNG in ``RUN/report/`` (the plots also as
SVG) and embedded in ``RUN/report/index.html`` as base64, so the page can be mailed or archived as a single file.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .evaluate import evaluate, load_eval_data, load_run
from .files import atomic_write, ensure_writable
from .visualise import (
    DEFAULT_COLOURS,
    draw_confusion,
    draw_image_table,
    draw_inference,
    draw_scene_grid,
    line_plot,
)


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (unreadable lines are skipped: a run killed mid-write may leave a
    partial last line); an empty list when there is no file."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _robust_range(values: list[float]) -> tuple[float, float] | None:
    """A y range that ignores the first, very negative ELBOs of training so the rest of the curve is visible."""
    v = np.asarray([x for x in values if math.isfinite(x)])
    if v.size < 2:
        return None
    lo, hi = np.percentile(v, 5), v.max()
    margin = 0.05 * (hi - lo if hi > lo else 1.0)
    return float(lo - margin), float(hi + margin)


# the held-out curves have a point per evaluation (far fewer than the training records): a dot on each shows where
# they were measured, and one evaluation alone still shows
_HELD_OUT = {label: {"marker": "o", "markersize": 3} for label in ("held-out ELBO", "held-out count accuracy")}


def _curves(records: list[dict], out: Path) -> list[tuple[str, Path]]:
    """ELBO and held-out count accuracy against steps and against training wall-clock seconds. The pictures
    have no title of their own: the page's caption under each is its title."""
    by_kind = {k: [r for r in records if r.get("kind") == k] for k in ("train", "eval", "final")}
    held = by_kind["eval"] + by_kind["final"]
    figures = []
    for xkey, xlabel in (("step", "optimiser steps"), ("train_seconds", "training wall-clock seconds")):
        series = {}
        for label, recs in (("train ELBO (batch)", by_kind["train"]), ("held-out ELBO", held)):
            pts = [(r[xkey], r["elbo"]) for r in recs if xkey in r and isinstance(r.get("elbo"), (int, float))]
            if pts:
                series[label] = tuple(zip(*pts))
        if series:
            ys = [y for _, ys in series.values() for y in ys]
            name = f"elbo_vs_{'steps' if xkey == 'step' else 'time'}.png"
            figures.append((f"ELBO against {xlabel}", line_plot(series, out / name, xlabel=xlabel,
                                                               ylabel="ELBO per image (nats)",
                                                               y_range=_robust_range(ys), styles=_HELD_OUT)))
        series = {}
        for label, recs in (("train count accuracy (batch)", by_kind["train"]),
                            ("held-out count accuracy", held)):
            pts = [(r[xkey], r["count_acc"]) for r in recs if xkey in r and
                   isinstance(r.get("count_acc"), (int, float))]
            if pts:
                series[label] = tuple(zip(*pts))
        if series:
            name = f"accuracy_vs_{'steps' if xkey == 'step' else 'time'}.png"
            figures.append((f"Count accuracy against {xlabel}", line_plot(
                series, out / name, xlabel=xlabel, ylabel="count accuracy", y_range=(0.0, 1.0),
                hlines=(0.95, 0.98), hline_label="95% and 98%", percent=True, styles=_HELD_OUT)))
    return figures


#: up to this many object slots the decomposition shows every slot (AIR's steps); a model with more (the grid
#: model's cells) shows the present ones only, in slot order
ALL_SLOTS_UP_TO = 8


@torch.no_grad()
def _decomposition(model, x: torch.Tensor, result, path: Path) -> Path:
    """Per scene: the input, the canvas after each step, and each step's reconstructed window (bordered in the
    step's colour; blank when the step found nothing). With many slots, only the present ones."""
    n_steps = model.config.max_steps
    every = n_steps <= ALL_SLOTS_UP_TO
    slots = [list(range(n_steps)) if every else torch.nonzero(result.z_pres[i]).flatten().tolist()
             for i in range(x.size(0))]
    width = max(1, max(len(s) for s in slots))
    blank = np.zeros_like(x[0, 0].numpy())
    window_blank = np.zeros_like(result.step_windows[0, 0, 0].numpy())
    rows, borders = [], []
    for i in range(x.size(0)):
        zp = result.z_pres[i:i + 1]
        zw, zh = _present_latents(model, x[i:i + 1])
        cells, colours = [x[i, 0].numpy()], [None]
        shown = torch.zeros_like(zp)
        for k in slots[i]:
            shown[0, k] = zp[0, k]
            canvas, _ = model.render(zh, zw, shown)
            cells.append(canvas[0, 0].clamp(0, 1).numpy())
            colours.append(DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)] if zp[0, k] else None)
        cells += [blank] * (width - len(slots[i]))
        colours += [None] * (width - len(slots[i]))
        for k in slots[i]:
            cells.append(result.step_windows[i, k, 0].clamp(0, 1).numpy())
            colours.append(DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)] if zp[0, k] else None)
        cells += [window_blank] * (width - len(slots[i]))
        colours += [None] * (width - len(slots[i]))
        rows.append(cells)
        borders.append(colours)
    what = "step" if every else "object"
    labels = ["input"] + [f"after {what} {k}" for k in range(1, width + 1)] + \
        [f"window {k}" for k in range(1, width + 1)]
    return draw_image_table(rows, path, scale=3, column_labels=labels, borders=borders)


def _present_latents(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic z_where, z_what of every step for images x."""
    q = model.guide(x, deterministic=True)
    return q.z_where, q.z_what


@torch.no_grad()
def _traversal(model, x: torch.Tensor, result, path: Path, n_dims: int = 6, n_values: int = 9) -> Path | None:
    """One object (the first found in the first scene with objects), its z_what with one dimension at a time
    set to -3..3 while the others stay; decoded with ``model.decoder`` and placed with ``model.render`` at
    the object's own z_where. The dimensions shown are those whose posterior means vary most across the
    scenes (the ones the model uses)."""
    present = [i for i in range(x.size(0)) if int(result.counts[i]) > 0]
    if not present:
        return None
    all_what = torch.cat([w for w in result.z_what if len(w)])
    dims = torch.argsort(all_what.var(0) if all_what.size(0) > 1 else all_what.abs()[0], descending=True)
    dims = dims[:min(n_dims, all_what.size(1))].tolist()
    i = present[0]
    z_where = result.z_where[i][:1]
    base = result.z_what[i][0]
    values = torch.linspace(-3, 3, n_values)
    rows, labels = [], []
    for d in dims:
        what = base.repeat(n_values, 1)
        what[:, d] = values
        canvas, _ = model.render(what[:, None], z_where.repeat(n_values, 1)[:, None], torch.ones(n_values, 1))
        rows.append([c[0].clamp(0, 1).numpy() for c in canvas])
        labels.append(f"dim {d}")
    return draw_image_table(rows, path, scale=2, row_labels=labels,
                            column_labels=[f"{v:+.1f}" for v in values.tolist()])


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                          for k, v in rows) + "</table>"


def _confusion_html(cm: list[list[int]]) -> str:
    head = "".join(f"<th>found {p}</th>" for p in range(len(cm)))
    body = "".join(f"<tr><th>true {t}</th>" + "".join(
        f"<td class='{'diag' if t == p else ''}'>{v}</td>" for p, v in enumerate(row)) + "</tr>"
        for t, row in enumerate(cm))
    return f"<table class='cm'><tr><th></th>{head}</tr>{body}</table>"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 16px; }
h1 { margin-bottom: 0; } .sub { color: #666; margin-top: 4px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
img.plot { image-rendering: auto; }
figure { margin: 12px 0; } figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 4px 10px; border: 1px solid #ddd; }
table.kv th { text-align: left; background: #f6f6f6; font-weight: 600; }
table.cm td { text-align: right; min-width: 60px; } table.cm td.diag { background: #dbeafe; font-weight: 600; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; color: white; border-radius: 3px; }
"""


def render_report(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, data=None,
                  n_eval: int | None = 1000, iw_samples: int = 0, n_show: int = 12, seed: int = 0,
                  invert: str = "auto") -> Path:
    """Write ``RUN/report/index.html`` (self-contained) and its PNGs for the run in ``run_dir``; return the
    HTML path.

    ``checkpoint``: which weights (default: the run's best.pt, else last.pt). ``data``: what to show the model
    (default: the run's held-out scenes; or a scene .npz / image files, see ``load_eval_data``); metrics use
    the first ``n_eval`` scenes, the pictures the first ``n_show``. ``iw_samples`` > 0 adds the
    importance-weighted log p(x) (slower). Sampling is seeded by ``seed``. ``run_dir`` may also be a checkpoint
    file, as for 'air eval' and 'air serve': its weights, and the run directory it lies in."""
    run = Path(run_dir)
    if run.is_file() and checkpoint is None:
        run, checkpoint = run.parent, run
    if not run.is_dir():
        raise DataError(f"{run}: no such run directory or checkpoint")
    model, cfg, step = load_run(checkpoint if checkpoint is not None else run)  # a run, before writing into it
    out = ensure_writable(run / "report", folder=True)
    # every sampled number below is seeded locally (evaluate, the prior samples), so the report is repeatable
    scenes = data if data is not None and not isinstance(data, (str, os.PathLike, list, tuple)) else \
        load_eval_data(data, model, cfg, n_eval, invert)
    ev = evaluate(model, scenes, iw_samples=iw_samples, train_step=step, seed=seed)
    labelled = "count_acc" in ev
    if hasattr(scenes, "images"):
        x = scenes.float_images()
        true_counts = np.asarray(scenes.counts)
    else:
        x = torch.as_tensor(np.asarray(scenes, dtype=np.float32))
        x = x[:, None] if x.dim() == 3 else x
        true_counts = None
    show = min(n_show, x.size(0))
    result = model.infer(x)
    sections: list[str] = []
    colours = "".join(f"<span style='background: rgb{tuple(DEFAULT_COLOURS[k])}'>step {k + 1}</span>"
                      for k in range(min(model.config.max_steps, len(DEFAULT_COLOURS))))

    # 1. reconstructions
    p = _inference_rows(x, result, list(range(show)), true_counts, out / "reconstructions.png")
    sections.append(_section("Inputs and reconstructions", p,
                             f"Top: the input scenes with each inference step's attention window in its own colour "
                             f"(<span class='legend'>{colours}</span>) and the count found. Bottom: the model's "
                             "reconstruction from the objects it found, with the same windows."))
    # 2. decomposition
    # scenes where the model found objects are the interesting ones: most objects first, one empty scene last
    found = result.counts.numpy()
    picks = [i for c in range(model.config.max_steps, 0, -1) for i in np.flatnonzero(found == c)[:2].tolist()]
    picks = (picks + np.flatnonzero(found == 0)[:1].tolist())[:6] or [0]
    p = _decomposition(model, x[picks], _subset(result, picks), out / "decomposition.png")
    sections.append(_section("Step by step", p, "Each row is one scene: the input, the canvas after each "
                             "inference step (objects are added one at a time), and what each step drew in its "
                             "window (bordered in the step's colour; blank where the step found no object)."))
    # 3. curves
    records = read_metrics(run)
    curves = _curves(records, out)
    if curves:
        sections.append("<h2>Training</h2><div class='grid2'>" + "".join(
            f"<figure><img class='plot' src='{_png(path)}' alt='{html.escape(title)}'>"
            f"<figcaption>{html.escape(title)}"
            "</figcaption></figure>" for title, path in curves) + "</div>")
    else:
        sections.append("<h2>Training</h2><p>No metrics.jsonl in this run directory: no curves.</p>")
    # 4. confusion and metrics
    from .data.datasets import describe

    trained_on = describe(cfg)
    shown = "the run's held-out part" if data is None else (
        ", ".join(map(str, data)) if isinstance(data, (list, tuple)) else
        str(data) if isinstance(data, (str, os.PathLike)) else "the data passed in")
    rows = [("trained on", trained_on), ("evaluated on", shown), ("scenes", str(ev["n"])),
            ("checkpoint step", str(step))]
    if labelled:
        rows.append(("count accuracy", f"{ev['count_acc']:.4f}"))
        rows += [(f"accuracy, true count {c}", f"{a:.4f}") for c, a in ev["count_acc_per_true_count"].items()]
    if "localisation" in ev:
        loc = ev["localisation"]
        rows += [("mean IoU of matched boxes", f"{loc['mean_iou']:.4f}"),
                 ("precision @ IoU 0.5", f"{loc['precision']:.4f}"), ("recall @ IoU 0.5", f"{loc['recall']:.4f}")]
    rows.append(("ELBO per image (nats)", f"{ev['elbo']:.2f}"))
    if "iw_log_px" in ev:
        rows.append((f"importance-weighted log p(x), K={ev['iw_samples']}", f"{ev['iw_log_px']:.2f}"))
    block = "<h2>Held-out evaluation</h2>" + _table(rows)
    if labelled:
        p = draw_confusion(ev["confusion"], out / "confusion.png")
        block += ("<h3>Count confusion</h3><div class='grid2'><div>" + _confusion_html(ev["confusion"]) +
                  "<p>Rows: true number of digits; columns: number found.</p></div>"
                  f"<figure><img class='plot' src='{_png(p)}' alt='count confusion matrix'></figure></div>")
    sections.append(block)
    # 5. worst errors
    elbo = np.asarray(ev["per_image_elbo"])
    pred = np.asarray(ev["per_image_predicted_count"])
    n_ev = len(elbo)
    if true_counts is not None:
        wrong = pred != true_counts[:n_ev]
        order = np.lexsort((elbo, ~wrong))  # miscounted first, then by lowest ELBO
        caption = (f"{int(wrong.sum())} of {n_ev} scenes miscounted. Shown: the miscounted ones first, then the "
                   "lowest ELBO (the scenes the model explains worst); top: found vs true count, bottom: "
                   "reconstruction.")
    else:
        order = np.argsort(elbo)
        caption = "The scenes with the lowest ELBO (explained worst)."
    worst = order[:min(n_show, n_ev)].tolist()
    p = _inference_rows(x, result, worst, true_counts, out / "worst.png")
    sections.append(_section("Worst errors", p, caption))
    # 6. prior samples
    g = torch.Generator().manual_seed(seed)
    sample_rows, labels = [], []
    for n_obj in range(1, model.config.max_steps + 1):
        imgs, zp, boxes = model.sample_prior(8, num_objects=n_obj, train_step=step, generator=g)
        sample_rows.append((imgs, boxes, zp))
        labels.append(n_obj)
    imgs = torch.cat([r[0] for r in sample_rows])
    size = model.config.image_size
    boxes = torch.cat([r[1] for r in sample_rows]).clamp(0, size).numpy()  # windows may reach past the edge
    boxes[~torch.cat([r[2] for r in sample_rows]).bool().numpy()] = -1  # absent steps: no window
    p = draw_scene_grid(imgs.clamp(0, 1), boxes, out / "prior_samples.png", ncols=8, scale=2,
                        captions=[f"{n} object{'s' * (n > 1)}" for n in labels for _ in range(8)])
    sections.append(_section("Samples from the generative model", p,
                             "Scenes drawn from the prior: z_where ~ N(prior), z_what ~ N(0, I), decoded and "
                             "placed; one row per number of objects (the count prior itself strongly favours "
                             "fewer objects, so the count is fixed per row), windows in their step's colour."))
    # 7. traversal
    p = _traversal(model, x[:max(show, 64)], _subset(result, list(range(min(max(show, 64), x.size(0))))),
                   out / "traversal.png")
    if p is not None:
        sections.append(_section("What z_what encodes", p,
                                 "One object found in a held-out scene; each row varies one dimension of its "
                                 "z_what from -3 to +3 (the dimensions the encoder uses most), decoded with the "
                                 "model's decoder and placed at the object's own window."))

    title = f"AIR report: {run.resolve().name}"
    summary = ""
    if (run / "summary.json").is_file():
        try:
            s = json.loads((run / "summary.json").read_text())
            parts = [f"{s['steps']} steps" if "steps" in s else "", f"{s['train_minutes']} min of training"
                     if "train_minutes" in s else "", f"device {s['device']}" if "device" in s else "",
                     str(s.get("precision", ""))]
            summary = ", ".join(p for p in parts if p)
        except (json.JSONDecodeError, OSError):
            summary = ""
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='sub'>{html.escape(summary)} &middot; data: {html.escape(trained_on)} &middot; "
            f"model: {model.config.image_size}x"
            f"{model.config.image_size} images, up to {model.config.max_steps} objects, z_what "
            f"{model.config.z_what_dim}-d{' (DAIR)' if model.config.dair else ''}</p>"
            + "".join(sections) + "</body></html>")
    path = out / "index.html"
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    summary = json.dumps({k: v for k, v in ev.items() if not k.startswith("per_image")}, indent=2)
    atomic_write(out / "eval.json", lambda f: f.write(summary.encode()))
    return path


def _inference_rows(x: torch.Tensor, result, idx: list[int], true_counts, path: Path, per_row: int = 6) -> Path:
    """:func:`draw_inference` for the scenes ``idx``, ``per_row`` scenes per band (inputs over their
    reconstructions), bands stacked vertically, so captions stay legible at page width."""
    from PIL import Image

    parts = []
    for start in range(0, len(idx), per_row):
        chunk = idx[start:start + per_row]
        tmp = path.with_name(f".{path.stem}.{start}.png")
        draw_inference(x[chunk], _subset(result, chunk), tmp,
                       true_counts=np.asarray(true_counts)[chunk].tolist() if true_counts is not None else None)
        with Image.open(tmp) as im:
            parts.append(im.convert("RGB"))
        tmp.unlink()
    width = max(p.width for p in parts)
    sheet = Image.new("RGB", (width, sum(p.height + 6 for p in parts)), "white")
    y = 0
    for p in parts:
        sheet.paste(p, (0, y))
        y += p.height + 6
    sheet.save(path, format="PNG")
    return path


def _section(title: str, png: Path, caption: str) -> str:
    return (f"<h2>{html.escape(title)}</h2><figure><img src='{_png(png)}' alt='{html.escape(title)}'>"
            f"<figcaption>{caption}</figcaption></figure>")


def _subset(result, idx: list[int]):
    """The InferenceResult of the images ``idx``."""
    from .model import InferenceResult

    t = torch.as_tensor(idx, dtype=torch.long)
    return InferenceResult(counts=result.counts[t], boxes=[result.boxes[i] for i in idx],
                           object_boxes=[result.object_boxes[i] for i in idx],
                           z_what=[result.z_what[i] for i in idx], z_where=[result.z_where[i] for i in idx],
                           pres_probs=result.pres_probs[t], reconstruction=result.reconstruction[t],
                           step_windows=result.step_windows[t], step_boxes=result.step_boxes[t],
                           z_pres=result.z_pres[t], object_scores=[result.object_scores[i] for i in idx])
