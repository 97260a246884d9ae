"""``air experiment``: the paper's experiments."""
from __future__ import annotations

import os

from .options import budgets_type, names_type, non_negative_int, positive_int

#: --quick: a short look at each experiment (the option values a user gives still win)
_QUICK = {"generalisation": {"steps": 1000, "n_train": 20_000, "n_test": 500, "eval_every": 250, "seeds": 1,
                              "refine_scenes": 100},
          "downstream": {"steps": 1500, "budgets": (100, 1000), "seeds": 1, "n_test": 1000, "n_train": 20_000}}


def add_experiment(sub) -> None:
    from ..experiments import MODELS, SETTINGS, TASKS

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
        q.add_argument("--steps", type=positive_int, default=None, help="AIR training steps per run (default: "
                       + ("3000)" if name == "generalisation" else "6000, the default air train)"))
        q.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
        q.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
        q.add_argument("--n-train", type=positive_int, default=None,
                       help="AIR's training scenes per run (default: 60000)")
        q.add_argument("--n-test", type=positive_int, default=None, help="held-out test scenes (default: 2000)")
        q.add_argument("--data-dir", default=None, metavar="DIR", help="a folder with the MNIST IDX files (optional)")
        q.add_argument("--no-progress", action="store_true", help="no progress output")
        q.set_defaults(func=run_experiment)
    g.add_argument("--settings", type=names_type(tuple(SETTINGS)), default=tuple(SETTINGS),
                   help=f"which settings (default: {','.join(SETTINGS)})")
    g.add_argument("--jobs", type=positive_int, default=None,
                   help="runs trained at once, each in its own process (default: one per core, or per --threads "
                   "cores, at most the number of runs)")
    g.add_argument("--models", type=names_type(MODELS), default=MODELS,
                   help="which models (default: air,dair,dair_memoryless)")
    g.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds per setting and model, --seed, --seed + 1, ... (default: 3)")
    g.add_argument("--max-steps", type=positive_int, default=None, metavar="N",
                   help="N, the most steps (default: 3; 4 for extrapolation_n4)")
    g.add_argument("--digit-size", type=positive_int, default=None, metavar="PX",
                   help="digit size (default: 24; 20 for extrapolation_n4)")
    g.add_argument("--eval-every", type=positive_int, default=None,
                   help="learning curve: accuracy on the unseen count every this many steps (default: 500)")
    g.add_argument("--refine-steps", type=non_negative_int, default=None, metavar="K",
                   help="also count with each final model's latents refined by K gradient steps on each count's "
                   "ELBO, the count with the best importance-weighted ELBO chosen, as air eval --refine-steps "
                   "(default: 100; 0: the guide's count only)")
    g.add_argument("--refine-samples", type=non_negative_int, default=None, metavar="S",
                   help="importance samples per count for the refined count (default: 128)")
    g.add_argument("--refine-scenes", type=positive_int, default=None, metavar="N",
                   help="the refined count on the first N scenes of each set (default: 200)")
    d.add_argument("--model", default=None, metavar="RUN",
                   help="use this trained model (run directory or .pt) instead of training one")
    d.add_argument("--budgets", type=budgets_type, default=None,
                   help="labelled scenes given to each classifier (default: 100,1000,10000)")
    d.add_argument("--seeds", type=positive_int, default=None, help="classifier seeds per budget (default: 2)")
    d.add_argument("--tasks", type=names_type(TASKS), default=TASKS, help="which tasks (default: sum,ascending)")
    d.add_argument("--classifier-steps", type=positive_int, default=None, metavar="STEPS",
                   help="the most optimiser steps of each classifier (30 passes over the labels, at least 300 "
                   "steps, at most this; default: 600)")


def run_experiment(args) -> int:
    from ..experiments import DownstreamConfig, GeneralisationConfig, downstream, generalisation
    from ..files import ensure_writable

    ensure_writable(args.out, folder=True)  # before any training
    given = {k: getattr(args, k) for k in ("steps", "n_train", "n_test", "eval_every", "budgets", "seeds", "jobs",
                                           "refine_steps", "refine_samples", "refine_scenes")
             if getattr(args, k, None) is not None}
    options = {**(_QUICK[args.experiment] if args.quick else {}), **given}
    common = dict(seed=args.seed, threads=args.threads, data_dir=args.data_dir)
    if args.experiment == "generalisation":
        cfg = GeneralisationConfig(**common, **options, settings=args.settings, models=args.models,
                                   max_steps=args.max_steps, digit_size=args.digit_size)
        out = generalisation(cfg, args.out, progress=not args.no_progress)
        from ..experiments import generalisation_table as table
    else:
        from ..experiments import ClassifierConfig

        steps = {} if args.classifier_steps is None else {"max_steps": args.classifier_steps,
                                                          "min_steps": min(300, args.classifier_steps)}
        cfg = DownstreamConfig(**common, **options, model_run=args.model, tasks=args.tasks,
                               classifier=ClassifierConfig(**steps))
        out = downstream(cfg, args.out, progress=not args.no_progress)
        from ..experiments import downstream_table as table
    print(table(out))
    print(f"wrote {os.path.join(args.out, args.experiment)}.json, .md, .png and .svg ({out['minutes']} minutes)")
    return 0
