"""``air train``: its options come from TrainConfig and ModelConfig (see options.add_config_options); a new
run's configuration from the options, from a saved run (--config) or from the run being resumed."""
from __future__ import annotations

import argparse
import os
import sys

from ..data.registry import SCENE_DATASETS, dataset
from .options import add_config_options, config_values, parse_counts

#: The fields of TrainConfig that air train offers, by help group (the rest keep their defaults)
TRAIN_OPTIONS = {
    "run": ("init_from", "steps", "minutes", "seed", "device", "threads", "precision", "compile"),
    "optimisation": ("batch_size", "lr", "restarts", "baseline_lr", "grad_clip"),
    "evaluation and checkpoints": ("eval_every", "eval_size", "checkpoint_every", "log_every"),
    "data": ("dataset", "data_path", "holdout", "n_train", "n_test", "digit_size", "max_digit_size", "counts",
             "allow_overlap", "max_overlap", "data_seed", "data_dir"),
}
#: The fields of ModelConfig that air train offers
MODEL_OPTIONS = ("architecture", "grid_size", "dair", "dair_memory", "z_pres_estimator", "max_steps", "z_what_dim",
                 "lstm_hidden", "window_size",
                 "likelihood", "likelihood_sigma", "composition", "z_pres_prior", "z_pres_prior_p",
                 "z_pres_anneal_start", "z_pres_anneal_steps", "scale_prior_mean", "scale_prior_std",
                 "shift_prior_std")


def add_train(sub) -> None:
    from ..config import ModelConfig, TrainConfig

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
    add_config_options(g, TrainConfig, TRAIN_OPTIONS["run"], steps={"default": None})
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    for title in ("optimisation", "evaluation and checkpoints", "data"):
        add_config_options(p.add_argument_group(title), TrainConfig, TRAIN_OPTIONS[title],
                            dataset={"default": None, "choices": SCENE_DATASETS})
    add_config_options(p.add_argument_group("model"), ModelConfig, MODEL_OPTIONS,
                        scale_prior_mean={"default": None})
    p.set_defaults(func=run_train, parser=p)


def run_train(args) -> int:
    import json

    from ..errors import InputError
    from ..run_setup import default_run_dir
    from ..train import train

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
        from ..data.datasets import describe

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
        from ..report import render_report
        print(f"report: {render_report(run_dir)}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the run is saved; the report is optional
        print(f"air train: warning: could not write the report ({type(e).__name__}: {e}); "
              f"try 'air report {run_dir}'", file=sys.stderr)
    return 0


def _config_from_options(args):
    """A new run's configuration from the command line alone: the options given, the defaults for the rest."""
    from ..config import ModelConfig, RunConfig, TrainConfig

    name = "files" if args.data is not None else (args.dataset or "mnist")
    scale_prior_mean = args.scale_prior_mean if args.scale_prior_mean is not None else \
        dataset(name).scale_prior_mean
    model = ModelConfig(**{**config_values(args, ModelConfig, MODEL_OPTIONS),
                           "scale_prior_mean": scale_prior_mean})
    options = [n for names in TRAIN_OPTIONS.values() for n in names]
    train_cfg = TrainConfig(**{**config_values(args, TrainConfig, options),
                               "steps": args.steps if args.steps is not None else TrainConfig.steps,
                               "counts": None if args.counts is None else parse_counts(args.counts),
                               "dataset": name,
                               "data_path": os.path.abspath(os.path.expanduser(args.data)) if args.data else None})
    return RunConfig(model=model, train=train_cfg)


def _with_checkpoint_model(args, cfg):
    """``air train --init-from CHECKPOINT`` without --config: the checkpoint's model configuration (so that its
    weights fit), with the model options typed on the command line in its place."""
    import dataclasses

    from ..checkpoint import load_checkpoint, resolve_checkpoint, saved_config
    from ..config import ModelConfig

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
    alone drops a minutes budget. The fields whose default depends on the data set (object sizes and counts,
    image size, zoom prior, DAIR) hold resolved values in the file, so one equal to its data set's default is
    taken to be that default: after a new --dataset or --data it becomes the new data set's, and a typed
    --digit-size alone means one size, as on a fresh command line."""
    import dataclasses

    from ..config import RunConfig

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
    if list(train["counts"]) == list(old["counts"]):
        train["counts"] = None
    for name, data_name in {"scale_prior_mean": "scale_prior_mean", "image_size": "canvas_size"}.items():
        if model[name] == old[data_name]:
            model[name] = new[data_name]
    if model["dair"] == old["dair"]:
        model["dair"] = None  # RunConfig gives the new data set's (AIR's only: the grid model has none)
    if "steps" in typed or "minutes" in typed:
        train["steps"] = args.steps if "steps" in typed else train["steps"]
        train["minutes"] = args.minutes if "minutes" in typed else (None if "steps" in typed else train["minutes"])
    for name in sorted(typed - {"data", "dataset", "steps", "minutes"}):
        value = parse_counts(args.counts) if name == "counts" else getattr(args, name)
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

    from ..checkpoint import load_checkpoint, saved_config, training_progress
    from ..errors import CheckpointError, InputError
    from ..run_setup import best_without_last

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
