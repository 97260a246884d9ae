"""The ``air`` command line: one sub-command per job (``air data``, ``air train``, ...), one module each.

Each sub-command has an ``add_<name>`` function that declares its options (every option with a help text)
and a ``run_<name>`` function that does the work. Errors the user can fix are ``AIRError``s: they are
printed as one clear message with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import AIRError
from .data import add_data
from .experiment import add_experiment
from .inspect import add_eval, add_infer, add_report
from .serve import add_serve
from .train import _NOT_CONFIG, MODEL_OPTIONS, TRAIN_OPTIONS, add_train  # noqa: F401 (tests read them here)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="air",
        description="Attend, Infer, Repeat: learn without labels to count, locate and describe the objects "
        "in an image. Run 'air COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"attend-infer-repeat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_data(sub)
    add_train(sub)
    add_eval(sub)
    add_infer(sub)
    add_report(sub)
    add_serve(sub)
    add_experiment(sub)
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
