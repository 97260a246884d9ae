"""How often a first attempt falls into a known trap, per setting: the share of seeds whose early trap check (the
two looks `air train` takes at steps 500 and 1,000 of its 6,000-step schedule, diagnose.py, no labels) finds a
trap that stays and makes the trainer start again. Each seed trains only up to that check (eagerly, on the default
schedule), so a setting's base rate costs about a sixth of a full sweep. The held-out count accuracy at each look
is recorded beside it, to see that a flagged attempt really is a bad one.

usage: python benchmarks/trap_rate.py [--seeds 0-19] [--setting NAME key=value ...] [--out FILE]
e.g.   python benchmarks/trap_rate.py --setting default --setting zoom2.5 scale_prior_mean=2.5
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse_settings(items: list[list[str]] | None) -> dict[str, dict]:
    """[['default'], ['zoom2.5', 'scale_prior_mean=2.5']] -> {'default': {}, 'zoom2.5': {...}}: the values are
    ModelConfig or TrainConfig fields, read as JSON where they parse (numbers, true/false), else as strings."""
    settings = {}
    for name, *pairs in items or [["default"]]:
        fields = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            try:
                fields[key] = json.loads(value)
            except json.JSONDecodeError:
                fields[key] = value
        settings[name] = fields
    return settings


def first_check(seed: int, overrides: dict, threads: int, checks: list[int] | None = None) -> dict:
    """Train ``seed`` with ``overrides`` up to its early trap check and return what the check found. With
    ``checks`` (steps), the check runs at each of them instead (the model trained on, whatever it finds, up to the
    last), to see at which step the check tells trapped attempts from good ones."""
    import torch

    from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig
    from attend_infer_repeat.diagnose import RESTART_TRAPS, staying_traps
    from attend_infer_repeat.train import Trainer

    torch.set_num_threads(threads)
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    model = ModelConfig(**{k: v for k, v in overrides.items() if k in model_keys})
    train = TrainConfig(**{"compile": "off", "seed": seed, "restarts": 1,
                           **{k: v for k, v in overrides.items() if k not in model_keys}})
    found: list[dict] = []

    class StopAtCheck(Trainer):
        def trap_check_steps(self):
            return super().trap_check_steps() if checks is None else tuple(checks)

        def check_traps(self):
            report = super().check_traps()
            found.append(dict(step=self.step, traps=[t["name"] for t in report["traps"] if t["name"] in RESTART_TRAPS],
                              staying=[t["name"] for t in staying_traps(report, found[0]["rates"] if found else None)],
                              rates=report["rates"],
                              count_acc=self.evaluate(self.cfg.train.eval_size)["count_acc"]))
            # the attempt's fate is decided at its last early look; the rest of the schedule is not needed
            self.stop_requested = self.step >= max(self.trap_check_steps(), default=0)
            return {"traps": [], "rates": report["rates"]}

    t0 = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        StopAtCheck(RunConfig(model=model, train=train), run_dir, progress=False).fit()
    last = found[-1] if found else {}
    return {"seed": seed, **last, "trapped": bool(last.get("staying")), "minutes": round((time.time() - t0) / 60, 2),
            "looks": found}


def main() -> None:
    from accuracy import parse_seeds
    from common import record

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-19")
    p.add_argument("--setting", nargs="+", action="append", metavar="NAME [KEY=VALUE ...]",
                   help="a named setting: ModelConfig/TrainConfig fields that differ from the defaults (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checks", default=None, help="steps of the early looks (default: the trainer's own, steps 500 "
                   "and 1,000: diagnose.early_look_steps), e.g. 500,750,1000: 'trapped' is the last look's verdict, "
                   "its traps compared with the first look's as the trainer compares its two")
    p.add_argument("--out", default=str(HERE / "results" / "trap_rate.json"))
    args = p.parse_args()
    settings = parse_settings(args.setting)
    checks = [int(c) for c in args.checks.split(",")] if args.checks else None
    out = {"benchmark": "trap_rate", **record(), "seeds": parse_seeds(args.seeds), "settings": settings,
           "checks": checks or "the trainer's (diagnose.early_look_steps: 500 and 1,000)",
           "results": {name: [] for name in settings}}
    for seed in out["seeds"]:  # seeds outermost: the settings meet the same drift of the machine
        for name, overrides in settings.items():
            result = first_check(seed, overrides, args.threads, checks)
            out["results"][name].append(result)
            for c in result["looks"]:
                print(f"{name} seed {seed} step {c['step']}: traps {c['traps']}, staying {c['staying']} (count "
                      f"accuracy {c['count_acc']}, {result['minutes']} min)", flush=True)
            print(f"{name} seed {seed}: {'TRAPPED' if result['trapped'] else 'ok'}", flush=True)
            out["summary"] = {n: {"attempts": len(r), "trapped": sum(x["trapped"] for x in r),
                                  "count_acc_at_check_trapped": sorted(x["count_acc"] for x in r if x["trapped"]),
                                  "count_acc_at_check_ok_min": min((x["count_acc"] for x in r if not x["trapped"]),
                                                                   default=None)}
                              for n, r in out["results"].items()}
            Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
