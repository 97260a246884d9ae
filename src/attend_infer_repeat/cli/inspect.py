"""``air eval``, ``air infer`` and ``air report``: what a trained model does on images."""
from __future__ import annotations

from ..files import atomic_write
from .options import non_negative_int, positive_int


def add_refine_options(p) -> None:
    """--refine-steps and --refine-samples, as air eval and air infer share them (AIR.infer's arguments)."""
    p.add_argument("--refine-steps", type=non_negative_int, default=0, metavar="K",
                   help="count with the guide's latents refined by K gradient steps on each count's ELBO, the best "
                   "count kept (slower; for scenes unlike the training scenes, e.g. other digit sizes or "
                   "overlapping digits; AIR only; default: 0, the guide alone)")
    p.add_argument("--refine-samples", type=non_negative_int, default=128, metavar="S",
                   help="with --refine-steps: each count's ELBO estimated by S importance samples; 0 scores it at "
                   "the refined means (default: 128)")


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a trained model on held-out scenes (counts, boxes, ELBO, log p(x))",
        description="Evaluate a trained model: count accuracy (overall, per true count, confusion matrix), "
        "localisation against the true digit frames (predicted and true boxes matched one-to-one by IoU; "
        "mean IoU of the matches, precision and recall at IoU 0.5), the ELBO per image and an "
        "importance-weighted estimate of log p(x) with K samples. By default on the run's own held-out scenes; "
        "--data takes a scene file 'air data' wrote, or image files/folders/arrays without labels (then only "
        "the density metrics and the counts found). Prints a table and writes JSON.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run directory (its best.pt) or a .pt file")
    p.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="scene .npz from 'air data', or image files / folders / .npy / .npz (default: the run's "
                   "held-out scenes)")
    p.add_argument("--n", type=positive_int, default=None, help="use only the first N scenes (default: all)")
    p.add_argument("--iw-samples", type=non_negative_int, default=100, metavar="K",
                   help="importance samples per image for log p(x); 0 skips it (default: 100)")
    p.add_argument("--iw-n", type=positive_int, default=1000, metavar="N",
                   help="estimate log p(x) on the first N scenes only, it costs K guide passes each "
                   "(default: 1000)")
    add_refine_options(p)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampled estimates (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the results (default: eval.json next to the checkpoint)")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    """Evaluate, print the table, write the JSON."""
    import json
    from pathlib import Path

    from ..checkpoint import resolve_checkpoint
    from ..evaluate import evaluate, format_table, load_eval_data, load_run
    from ..files import ensure_writable

    ckpt = resolve_checkpoint(args.checkpoint)
    out = Path(args.json) if args.json else ckpt.parent / "eval.json"
    if out.suffix.lower() != ".json":  # never a checkpoint, a scene file or metrics.jsonl by a slip of the hand
        from ..errors import InputError
        raise InputError(f"--json {out}: the results are written as JSON: name a file ending in .json")
    ensure_writable(out)  # before the evaluation
    model, cfg, step = load_run(ckpt, device=args.device)
    data = load_eval_data(args.data, model, cfg, args.n)
    result = evaluate(model, data, iw_samples=args.iw_samples, iw_images=args.iw_n, train_step=step,
                      seed=args.seed, refine_steps=args.refine_steps, refine_samples=args.refine_samples)
    result["checkpoint"] = str(ckpt)
    result["data"] = args.data or "the run's held-out scenes"
    text = json.dumps(result, indent=2)
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"air eval: {ckpt} (step {step})")
    print(format_table(result))
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------- air infer
def add_infer(sub) -> None:
    p = sub.add_parser(
        "infer", help="find the objects in images: boxes, presence, z_what as JSON, and overlay PNGs",
        description="Run a trained model on your images. Inputs: PNG, JPEG, GIF, BMP, WebP, TIFF or PGM/PPM files, "
        "folders (their image and .npy/.npz files, not recursive), .npy arrays (H,W), (N,H,W), (N,1,H,W) or (N,H,W,C) "
        "and .npz (its 'images' array or its only array). Colour becomes grey by luminance; integer images are "
        "divided by 255 (65535 for 16-bit); dark-on-light images (bright border) are inverted (see --invert); "
        "images of another size are padded to a centred square and resized to the model's size, and the boxes "
        "are reported in the ORIGINAL image's pixels (x_min, y_min, x_max, y_max). Writes OUT/results.json and "
        "one overlay PNG per image with each inference step's window in its own colour.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run directory (its best.pt) or a .pt file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, .npy or .npz arrays")
    p.add_argument("--out", default="air-infer", metavar="DIR",
                   help="folder for results.json and the overlays (default: ./air-infer)")
    p.add_argument("--invert", choices=("auto", "always", "never"), default="auto",
                   help="make digits light on dark: auto inverts images whose border is bright (default: auto)")
    p.add_argument("--no-overlays", action="store_true", help="write only results.json")
    add_refine_options(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    p.set_defaults(func=run_infer)


def run_infer(args) -> int:
    """Read, prepare, infer; write JSON and overlays; one summary line per image."""
    import json
    from pathlib import Path

    import numpy as np

    from ..checkpoint import resolve_checkpoint
    from ..data.images import prepare, read_inputs
    from ..evaluate import load_run
    from ..files import ensure_writable
    from ..visualise import draw_overlay

    ckpt = resolve_checkpoint(args.checkpoint)
    out = ensure_writable(Path(args.out), folder=True)  # before any work
    sources = read_inputs(args.inputs)  # fails on the first unusable input, naming it, before any work
    model, cfg, _ = load_run(ckpt, device=args.device)
    size = model.config.image_size
    prepared = [prepare(s.pixels, size, args.invert) for s in sources]
    result = model.infer(np.stack([p.image for p in prepared]), refine_steps=args.refine_steps,
                          refine_samples=args.refine_samples)
    records = []
    for i, (src, prep) in enumerate(zip(sources, prepared)):
        steps = np.flatnonzero(result.z_pres[i].numpy() > 0).tolist()
        boxes = prep.to_original(result.step_boxes[i].numpy()) if steps else np.zeros((0, 4))
        drawn = prep.to_original(result.object_boxes[i].numpy()) if steps else np.zeros((0, 4))
        objects = [{"step": k + 1, "box": [round(float(v), 2) for v in boxes[k]],
                    "object_box": [round(float(v), 2) for v in drawn[j]],
                    "presence_prob": round(float(result.pres_probs[i, k]), 4),
                    "z_where": [round(float(v), 5) for v in result.z_where[i][j]],
                    "z_what": [round(float(v), 5) for v in result.z_what[i][j]]}
                   for j, k in enumerate(steps)]
        record = {"source": src.name, "width": int(src.pixels.shape[1]), "height": int(src.pixels.shape[0]),
                  "inverted": prep.inverted, "count": len(objects), "objects": objects,
                  "step_presence_probs": [round(float(v), 4) for v in result.pres_probs[i]]}
        if not args.no_overlays:
            stem = Path(src.name.replace("[", "_").replace("]", "")).name
            overlay = out / f"{i:04d}_{Path(stem).stem}{Path(stem).suffix.replace('.', '_')}.png"
            shown = 1.0 - src.pixels if prep.inverted else src.pixels
            draw_overlay(shown, [(o["step"] - 1, o["box"]) for o in objects], overlay)
            record["overlay"] = str(overlay)
        records.append(record)
        print(f"{src.name}: {len(objects)} object{'s' * (len(objects) != 1)}"
              + "".join(f"; step {o['step']} box {o['box']} p={o['presence_prob']:.2f}" for o in objects))
    meta = {"checkpoint": str(ckpt), "image_size": size, "box_format": "x_min, y_min, x_max, y_max in the "
            "original image's pixels (exclusive max edges)", "presence_prob": "q(z_pres = 1 | previous step "
            "present), the guide's probability that this step holds an object", "images": records}
    text = json.dumps(meta, indent=2)
    atomic_write(out / "results.json", lambda f: f.write(text.encode()))
    print(f"wrote {out / 'results.json'}" + ("" if args.no_overlays else f" and {len(records)} overlays"))
    return 0


# --------------------------------------------------------------------------------------------- air report
def add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report of what a run learned (RUN/report/index.html)",
        description="Write RUN/report/index.html (images embedded, a single file to share) and its PNGs: "
        "inputs and reconstructions with each step's window, the step-by-step decomposition, training curves "
        "against steps and wall-clock time, the count confusion matrix, the worst errors, samples from the "
        "generative model and a z_what traversal. 'air train' writes it at the end of every run.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory written by 'air train', or a checkpoint in one")
    p.add_argument("--checkpoint", default=None, help="which weights (default: RUN/best.pt, else RUN/last.pt)")
    p.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="scene .npz or images to show (default: the run's held-out scenes)")
    p.add_argument("--n", type=positive_int, default=1000, help="held-out scenes to score (default: 1000)")
    p.add_argument("--iw-samples", type=non_negative_int, default=0, metavar="K",
                   help="also estimate log p(x) with K importance samples (slower; default: 0, off)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of sampled pictures (default: 0)")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from ..report import render_report

    path = render_report(args.run, checkpoint=args.checkpoint, data=args.data, n_eval=args.n,
                         iw_samples=args.iw_samples, seed=args.seed)
    print(f"wrote {path}")
    return 0
