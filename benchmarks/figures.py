"""Pictures of what a trained model learned, for the README: held-out scenes with each step's window and the
model's reconstructions.

usage: python benchmarks/figures.py RUN_DIR_OR_CHECKPOINT [--n 12] [--out docs/inference.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from attend_infer_repeat import AIR
from attend_infer_repeat.data import SceneConfig, make_scenes
from attend_infer_repeat.visualise import draw_inference

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--seed", type=int, default=7, help="seed of the held-out scenes shown")
    p.add_argument("--out", default=str(ROOT / "docs" / "inference.png"))
    a = p.parse_args()
    model = AIR.load(a.checkpoint)
    scenes = make_scenes("test", 200, SceneConfig(seed=a.seed))
    # every count, two-digit scenes (the interesting ones) first and most: n/2, n/3, n/6 of them
    shares = {2: a.n - a.n // 3 - a.n // 6, 1: a.n // 3, 0: a.n // 6}
    idx = np.concatenate([np.flatnonzero(scenes.counts == c)[:k] for c, k in shares.items()])
    images = scenes.images[idx]
    result = model.infer(images)
    print(draw_inference(images, result, a.out, true_counts=scenes.counts[idx].tolist()))


if __name__ == "__main__":
    main()
