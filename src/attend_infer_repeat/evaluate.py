"""Held-out evaluation: count accuracy, localisation, ELBO and importance-weighted log p(x) of a model.

``evaluate_counts`` is the quick check the trainer runs periodically; ``evaluate`` is the full evaluation
behind ``air eval`` and the report."""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from .checkpoint import load_run  # noqa: F401  (part of this module's API: air eval, report)
from .data.scene import real_box_rows
from .diagnose import check_traps
from .errors import InputError
from .model import AIR, eval_mode
from .model.inputs import as_float_batch
from .model.objective import bernoulli_log_prob, normal_log_prob, previous_present


@contextmanager
def seeded(seed: int, device: torch.device):
    """Sample from a fixed seed inside the block and leave the caller's RNG state as it was: evaluation
    numbers are repeatable, and how often one evaluates never changes a training run."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def evaluate_counts(model: AIR, images, counts, batch_size: int = 1000, train_step: int = 0,
                    with_elbo: bool = True) -> dict[str, float]:
    """Count accuracy (deterministic inference) and mean single-sample ELBO per image on labelled scenes
    (``counts=None``, unlabelled images: ``count_acc`` is None)."""
    images = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    labelled = counts is not None
    counts = torch.as_tensor(np.asarray(counts)).long() if labelled else None
    dev = next(model.parameters()).device
    correct, elbo_sum, n = 0, 0.0, 0
    with eval_mode(model):
        for i in range(0, images.size(0), batch_size):
            x = as_float_batch(images[i:i + batch_size]).to(dev)
            q = model.guide(x, deterministic=True)
            if labelled:
                correct += int((q.z_pres.sum(1).long().cpu() == counts[i:i + batch_size]).sum())
            if with_elbo:
                elbo_sum += float(model.loss(x, train_step, use_baseline=False).elbo.sum())
            n += x.size(0)
    out = {"count_acc": correct / max(n, 1) if labelled else None, "n": n}
    if with_elbo:
        out["elbo"] = elbo_sum / max(n, 1)
    return out


# ============================================================================================================
# Full evaluation (``air eval``): counts, localisation, ELBO and an importance-weighted log p(x)
# ============================================================================================================
# Why these metrics: AIR learns without labels, so what it "learned" shows in three independent ways — does it
# count right (accuracy, and *which* counts it confuses), does it put its windows on the digits (boxes matched
# to the true frames by IoU), and how good a density model is it (the ELBO is only a bound; the importance-
# weighted estimate with K samples is a tighter one that converges to log p(x) as K grows).

def box_iou(a, b) -> np.ndarray:
    """IoU of every box in ``a`` (P, 4) with every box in ``b`` (T, 4): (P, T). Boxes are ``x_min, y_min,
    x_max, y_max`` (any consistent unit); empty or inverted boxes have area 0 and IoU 0 with everything."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def linear_assignment(cost) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimum-cost assignment of a (R, C) cost matrix (SciPy's ``linear_sum_assignment``): ``min(R, C)``
    pairs ``(rows[i], cols[i])``, each row and column used at most once, with the smallest total cost."""
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise InputError(f"cost must be a 2-d matrix, got shape {cost.shape}")
    if cost.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if not np.isfinite(cost).all():
        raise InputError("cost matrix contains NaN or infinite values")
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


def match_boxes(pred, true) -> list[tuple[int, int, float]]:
    """Pair predicted and true boxes one-to-one maximising the total IoU (Hungarian on 1 - IoU):
    ``(pred index, true index, iou)`` for ``min(P, T)`` pairs (a pair may have IoU 0: a thresholded
    metric decides whether it counts as a hit)."""
    iou = box_iou(pred, true)
    if iou.size == 0:
        return []
    rows, cols = linear_assignment(1.0 - iou)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols)]


def _real_boxes(b) -> np.ndarray:
    """Drop padding rows (any negative or non-finite coordinate, the ``Scenes.boxes`` convention)."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return b[real_box_rows(b)]


def _predicted_boxes(b) -> np.ndarray:
    """A model's boxes (n, 4), every row real: a window may reach past the canvas's top or left edge, so a
    negative coordinate is not the padding that true boxes carry."""
    return np.asarray(b, dtype=np.float64).reshape(-1, 4)


def localisation_metrics(pred_boxes, true_boxes, iou_threshold: float = 0.5) -> dict[str, float]:
    """Boxes found vs true boxes over a data set (one (n_i, 4) array per image; true boxes may carry -1
    padding rows). Per image the boxes are matched by :func:`match_boxes`; then

    * ``mean_iou``: mean IoU of all matched pairs (how well the windows sit on the digits they matched),
    * ``precision``: matched pairs with IoU >= threshold / predicted boxes (extra windows lower it),
    * ``recall``: the same hits / true boxes (missed digits lower it)."""
    if len(pred_boxes) != len(true_boxes):
        raise InputError(f"{len(pred_boxes)} predicted box sets for {len(true_boxes)} images")
    ious, hits, n_pred, n_true = [], 0, 0, 0
    for p, t in zip(pred_boxes, true_boxes):
        p, t = _predicted_boxes(p), _real_boxes(t)
        n_pred += len(p)
        n_true += len(t)
        for _, _, iou in match_boxes(p, t):
            ious.append(iou)
            hits += iou >= iou_threshold
    return {"mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "precision": hits / n_pred if n_pred else float("nan"),
            "recall": hits / n_true if n_true else float("nan"),
            "iou_threshold": iou_threshold, "matched": len(ious), "hits": int(hits),
            "predicted_boxes": n_pred, "true_boxes": n_true}


def average_precision(pred_boxes, scores, true_boxes, iou_threshold: float = 0.5) -> float:
    """Average precision of detections over a data set, the detection benchmarks' AP at one IoU threshold
    (AP50 at 0.5): every image's boxes (n_i, 4) with a score each, ranked together by score; going down the
    ranking, a box is a true positive when it overlaps by ``iou_threshold`` or more a true box of its image that
    no higher-ranked box took (else a false positive); AP is the area under the precision-recall curve with
    precision made monotone (every-point interpolation, as PASCAL VOC since 2010). True boxes may carry -1
    padding rows. NaN when there are no true boxes."""
    if not len(pred_boxes) == len(scores) == len(true_boxes):
        raise InputError(f"{len(pred_boxes)} predicted box sets and {len(scores)} score sets for "
                         f"{len(true_boxes)} images")
    truth = [_real_boxes(t) for t in true_boxes]
    n_true = sum(len(t) for t in truth)
    if n_true == 0:
        return float("nan")
    ranked = sorted(((float(s), i, j) for i, ss in enumerate(scores) for j, s in enumerate(np.asarray(ss))),
                    key=lambda r: -r[0])
    taken = [np.zeros(len(t), bool) for t in truth]
    preds = [_predicted_boxes(p) for p in pred_boxes]
    for i, (p, s) in enumerate(zip(preds, scores)):
        if len(p) != np.asarray(s).size:
            raise InputError(f"image {i} has {len(p)} predicted boxes but {np.asarray(s).size} scores")
    hits = np.zeros(len(ranked))
    for r, (_, i, j) in enumerate(ranked):
        if len(truth[i]) == 0:
            continue
        iou = box_iou(preds[i][j:j + 1], truth[i])[0]
        iou[taken[i]] = -1.0
        best = int(iou.argmax())
        if iou[best] >= iou_threshold:
            taken[i][best] = True
            hits[r] = 1
    tp = np.cumsum(hits)
    recall = np.concatenate([[0.0], tp / n_true])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(ranked) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def confusion_matrix(true_counts, pred_counts, size: int | None = None) -> np.ndarray:
    """(size, size) int matrix: entry [t, p] = images with true count t that the model counted as p.
    ``size`` defaults to one more than the largest count present."""
    t = np.asarray(true_counts, dtype=np.int64).ravel()
    p = np.asarray(pred_counts, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise InputError(f"{t.size} true counts for {p.size} predicted counts")
    if (t < 0).any() or (p < 0).any():
        raise InputError("counts must be non-negative")
    size = size if size is not None else int(max(t.max(initial=0), p.max(initial=0))) + 1
    m = np.zeros((size, size), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def log_weights(model: AIR, x: torch.Tensor, train_step: int = 0) -> torch.Tensor:
    """One importance weight per image: ``log p(x, z) - log q(z | x)`` with z ~ q(z | x), (B,).

    Full log densities of the sampled latents (not the analytic KLs of the ELBO): z_pres_i is Bernoulli
    under q and under ``model.prior(train_step)`` and counts only while the previous step was present
    (after the first 0 the rest is 0 with probability 1 under both); z_where and z_what are Gaussian and
    count only for present steps (absent steps' values are never used by the model, so their densities
    cancel). Its mean is an unbiased estimate of the ELBO. A model with its own (the grid model, whose cells
    are independent) computes them itself."""
    if hasattr(model, "log_weights"):
        return model.log_weights(x, train_step)
    q = model.guide(x, deterministic=False)
    canvas = q.canvas if model.config.dair else model.render(q.z_what, q.z_where, q.z_pres)[0]
    present = q.z_pres
    alive = previous_present(present)  # z_pres_{i-1}
    prior_logit = torch.logit(model.prior(train_step).to(x))[None].expand_as(present)
    log_p_pres = (alive * bernoulli_log_prob(present, prior_logit)).sum(1)
    log_q_pres = (alive * bernoulli_log_prob(present, q.z_pres_logit)).sum(1)
    log_p_obj = normal_log_prob(q.z_where, model.where_prior_loc, model.where_prior_std) + \
        normal_log_prob(q.z_what, 0.0, 1.0)
    log_q_obj = normal_log_prob(q.z_where, q.z_where_loc, q.z_where_std) + \
        normal_log_prob(q.z_what, q.z_what_loc, q.z_what_std)
    log_p = model.log_likelihood(x, canvas) + log_p_pres + (present * log_p_obj).sum(1)
    log_q = log_q_pres + (present * log_q_obj).sum(1)
    return log_p - log_q


@torch.no_grad()
def importance_log_px(model: AIR, images, k: int = 100, train_step: int = 0,
                      max_rows: int = 4000) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) per image, (B,):
    ``logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K`` with z_k ~ q(z | x) (Burda et al., 2016).

    A lower bound in expectation that tightens as K grows (K = 1 is the ELBO). The K samples of several
    images run as one batch of at most ``max_rows`` rows, so K = 100 costs about as much as evaluating the
    guide on 100x the images."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k (importance samples) must be a positive integer, got {k!r}")
    x_all = as_float_batch(torch.as_tensor(images))
    dev = next(model.parameters()).device
    out = []
    per = max(1, max_rows // k)  # images per batch
    with eval_mode(model):
        for i in range(0, x_all.size(0), per):
            x = x_all[i:i + per].to(dev)
            b = x.size(0)
            w = torch.empty(b, k, device=dev)
            chunk = max(1, max_rows // b)  # samples per image per pass when K is larger than max_rows
            for s in range(0, k, chunk):
                c = min(chunk, k - s)
                xr = x.repeat_interleave(c, 0)
                w[:, s:s + c] = log_weights(model, xr, train_step).view(b, c).to(w)
            out.append((torch.logsumexp(w.double(), 1) - math.log(k)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _as_eval_data(data) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
    """A Scenes, an images array, or (images, counts[, boxes]) -> (float images, counts or None, boxes or None)."""
    from .data.scene import Scenes

    if isinstance(data, Scenes):
        return data.float_images(), np.asarray(data.counts), np.asarray(data.boxes)
    boxes = counts = None
    if isinstance(data, (tuple, list)):
        if not 1 <= len(data) <= 3:
            raise InputError("data must be a Scenes, an image array, or (images, counts[, boxes])")
        images = data[0]
        counts = np.asarray(data[1]).astype(np.int64).ravel() if len(data) > 1 and data[1] is not None else None
        boxes = np.asarray(data[2], dtype=np.float64) if len(data) > 2 and data[2] is not None else None
    else:
        images = data
    from .model.inputs import as_image_batch
    if isinstance(images, torch.Tensor) or isinstance(images, np.ndarray):
        size = images.shape[-1] if images.ndim >= 2 else 0
        x = as_image_batch(images, size)
    else:
        raise InputError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    n = x.size(0)
    if counts is not None and len(counts) != n:
        raise InputError(f"{len(counts)} counts for {n} images")
    if boxes is not None and len(boxes) != n:
        raise InputError(f"{len(boxes)} box sets for {n} images")
    return x, counts, boxes


@torch.no_grad()
def evaluate(model: AIR, data, iw_samples: int = 100, iw_images: int | None = 1000, batch_size: int = 500,
             train_step: int = 0, seed: int = 0, iou_threshold: float = 0.5, refine_steps: int = 0,
             refine_samples: int = 128) -> dict:
    """Everything ``air eval`` reports, as a JSON-ready dict.

    ``data``: a :class:`~attend_infer_repeat.data.Scenes`, an image array (unlabelled: only the density
    metrics and the distribution of found counts), or ``(images, counts[, boxes])``. Count and box metrics use
    deterministic inference (as ``air infer``; with ``refine_steps`` and ``refine_samples`` the refined count of
    :meth:`AIR.infer`, the sampled count accuracy staying the guide's); the ELBO is the single-sample estimate
    per image, averaged; the importance-weighted log p(x) uses ``iw_samples`` samples on the first ``iw_images``
    images (None: all; ``iw_samples=0`` skips it). Sampling is seeded (``seed``) so the numbers are repeatable; the
    global RNG is left as it was."""
    import time

    x, counts, boxes = _as_eval_data(data)
    if x.shape[-1] != model.config.image_size:
        raise InputError(f"the images are {x.shape[-1]}x{x.shape[-1]} but the model works on "
                         f"{model.config.image_size}x{model.config.image_size} images")
    n = x.size(0)
    if n == 0:
        raise InputError("no images to evaluate")
    t0 = time.perf_counter()
    result = model.infer(x, batch_size=batch_size, refine_steps=refine_steps, refine_samples=refine_samples)
    pred = result.counts.numpy()
    n_steps = model.config.max_steps
    out: dict = {"n": n, "train_step": train_step, "max_steps": n_steps, "refine_steps": refine_steps,
                 "refine_samples": refine_samples if refine_steps else None,
                 "predicted_count_histogram": np.bincount(pred, minlength=n_steps + 1).tolist()}
    if counts is not None:
        size = max(n_steps, int(counts.max(initial=0))) + 1
        cm = confusion_matrix(counts, pred, size)
        out["count_acc"] = float((pred == counts).mean())
        out["count_mae"] = float(np.abs(pred - counts).mean())
        out["count_acc_per_true_count"] = {str(c): float(cm[c, c] / cm[c].sum()) for c in range(size)
                                           if cm[c].sum() > 0}
        out["true_count_histogram"] = cm.sum(1).tolist()
        out["confusion"] = cm.tolist()
    if boxes is not None:
        out["localisation"] = localisation_metrics([b.numpy() for b in result.boxes], boxes, iou_threshold)
    from .data.scene import Scenes

    if isinstance(data, Scenes):  # also against the tight ink boxes: the windows AIR learns frame the ink, and
        # the boxes of what each object draws (a square window cannot fit a thin digit's box, a drawn "1" can)
        out["localisation_ink"] = localisation_metrics([b.numpy() for b in result.boxes],
                                                       np.asarray(data.ink_boxes), iou_threshold)
        out["localisation_objects"] = localisation_metrics([b.numpy() for b in result.object_boxes],
                                                           np.asarray(data.ink_boxes), iou_threshold)
        # detection: the boxes of what each found object draws against the digits' ink boxes, ranked by q
        scores = [s.numpy() for s in result.object_scores]
        out["ap50"] = average_precision([b.numpy() for b in result.object_boxes], scores,
                                        np.asarray(data.ink_boxes), 0.5)
        out["ap50_windows"] = average_precision([b.numpy() for b in result.boxes], scores, np.asarray(data.boxes),
                                                0.5)
    dev = next(model.parameters()).device
    if counts is not None:
        with seeded(seed, dev):
            probs = model.count_probs(x, batch_size=batch_size).double().numpy()
        hit = probs[np.arange(n), np.minimum(counts, n_steps)] * (counts <= n_steps)
        out["sampled_count_acc"] = float(hit.mean())
    with seeded(seed, dev):
        elbo = []
        with eval_mode(model):
            for i in range(0, n, batch_size):
                xb = x[i:i + batch_size].to(dev)
                elbo.append(model.loss(xb, train_step, use_baseline=False).elbo.double().cpu())
        elbo_t = torch.cat(elbo)
        out["elbo"] = float(elbo_t.mean())
        out["elbo_std"] = float(elbo_t.std()) if n > 1 else 0.0
        out["per_image_elbo"] = elbo_t.tolist()
        if iw_samples:
            m = n if iw_images is None else min(iw_images, n)
            t1 = time.perf_counter()
            lpx = importance_log_px(model, x[:m], iw_samples, train_step)
            out["iw_log_px"] = float(lpx.mean())
            out["iw_samples"] = iw_samples
            out["iw_images"] = m
            out["elbo_on_iw_images"] = float(elbo_t[:m].mean())
            out["iw_seconds"] = round(time.perf_counter() - t1, 2)
    with seeded(seed, dev):
        traps = check_traps(model, x, batch_size=batch_size)
    out["traps"], out["trap_rates"] = traps["traps"], traps["rates"]
    out["per_image_predicted_count"] = pred.tolist()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def format_table(result: dict) -> str:
    """``evaluate``'s dict as a readable plain-text table for the terminal."""
    lines = [f"scenes evaluated:        {result['n']}"]
    if "count_acc" in result:
        lines.append(f"count accuracy:          {result['count_acc']:.4f}  (deterministic: z_pres = [q > 0.5])")
        if "count_mae" in result:
            lines.append(f"count error (mean |n|):  {result['count_mae']:.4f}  digits")
        for c, acc in result["count_acc_per_true_count"].items():
            lines.append(f"  true count {c}:          {acc:.4f}  ({result['true_count_histogram'][int(c)]} scenes)")
        cm = result["confusion"]
        width = max(6, max(len(str(v)) for row in cm for v in row) + 1)
        lines.append("count confusion (rows: true count, columns: found count):")
        lines.append("      " + "".join(f"{p:>{width}}" for p in range(len(cm))))
        for t, row in enumerate(cm):
            lines.append(f"  {t:>3} " + "".join(f"{v:>{width}}" for v in row))
        if "sampled_count_acc" in result:
            lines.append(f"sampled count accuracy:  {result['sampled_count_acc']:.4f}  (E_q[n = true count], as Pyro "
                         "and Dittadi measure it)")
    else:
        lines.append("found counts:            " + ", ".join(
            f"{c}: {v}" for c, v in enumerate(result["predicted_count_histogram"])))
    if "localisation" in result:
        loc = result["localisation"]
        th = loc["iou_threshold"]
        lines.append(f"mean IoU of matches:     {loc['mean_iou']:.4f}  ({loc['matched']} matched pairs)")
        lines.append(f"precision @ IoU {th:g}:    {loc['precision']:.4f}  ({loc['hits']} / "
                     f"{loc['predicted_boxes']} boxes found)")
        lines.append(f"recall @ IoU {th:g}:       {loc['recall']:.4f}  ({loc['hits']} / {loc['true_boxes']} "
                     "true boxes)")
    if "localisation_ink" in result:
        loc = result["localisation_ink"]
        lines.append(f"against the ink boxes:   mean IoU {loc['mean_iou']:.4f}, precision {loc['precision']:.4f}, "
                     f"recall {loc['recall']:.4f} @ IoU {loc['iou_threshold']:g}")
    if "localisation_objects" in result:
        loc = result["localisation_objects"]
        lines.append(f"drawn objects vs ink:    mean IoU {loc['mean_iou']:.4f}, precision {loc['precision']:.4f}, "
                     f"recall {loc['recall']:.4f} @ IoU {loc['iou_threshold']:g}  (box of what each object draws)")
    if "ap50" in result:
        lines.append(f"AP50 (detection):        {result['ap50']:.4f}  (drawn objects vs ink boxes, ranked by q; "
                     f"windows vs frames {result['ap50_windows']:.4f})")
    if "elbo" in result:
        lines.append(f"ELBO per image:          {result['elbo']:.2f}  (std {result['elbo_std']:.2f}, nats)")
    if "iw_log_px" in result:
        lines.append(f"IW log p(x), K={result['iw_samples']}:   {result['iw_log_px']:.2f}  (first "
                     f"{result['iw_images']} scenes; their ELBO {result['elbo_on_iw_images']:.2f}; "
                     f"{result['iw_seconds']:.1f} s)")
    if "traps" in result:
        found = result["traps"]
        lines.append("trap check:              " + ("no known trap found" if not found else
                                                  f"{len(found)} trap(s) found:"))
        lines.extend(f"  {t['name']}: {t['message']}" for t in found)
    lines.append(f"time:                    {result['seconds']:.1f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Loading a model and its held-out data (shared by ``air eval``, ``air report`` and ``air infer``)
# ------------------------------------------------------------------------------------------------------------
def take_scenes(scenes, n: int | None):
    """The first ``n`` scenes of a Scenes (all when ``n`` is None or larger)."""
    return scenes if n is None or n >= len(scenes) else scenes.take(slice(0, n))


def run_test_scenes(cfg, n: int | None = None):
    """The held-out scenes of a run (the ones ``air train`` scored: for generated data sets the test items,
    seed data_seed + 1, the run's canvas, object size and counts, generated once and cached; for the user's
    images their held-out part, unlabelled ones as a float32 (N, H, W) array in [0, 1]); the first ``n``."""
    from .data.datasets import run_test_data

    data = run_test_data(cfg)
    return take_scenes(data, n) if hasattr(data, "counts") else data[:n].astype(np.float32) / 255.0


def load_eval_data(spec, model: AIR, cfg, n: int | None = None, invert: str = "auto"):
    """What to evaluate on: ``None`` -> the run's own held-out scenes; a scene ``.npz`` that ``air data`` wrote
    -> those scenes (labels and boxes); any other image files, folders or arrays -> unlabelled images prepared
    as ``air infer`` prepares them (see :mod:`attend_infer_repeat.data.images`). Returns a Scenes or a float array."""
    from pathlib import Path

    from .data.datasets import is_scene_file
    from .data.images import prepare, read_inputs
    from .data.scene import Scenes

    if spec is None:
        return run_test_scenes(cfg, n)
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if len(specs) == 1 and is_scene_file(specs[0]):
        return take_scenes(Scenes.load(specs[0]), n)
    images = read_inputs(specs)[:n]
    size = model.config.image_size
    return np.stack([prepare(s.pixels, size, invert).image for s in images])
