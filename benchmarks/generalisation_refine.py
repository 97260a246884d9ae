"""The generalisation experiment's runs counted again with the refined count: for each finished run of
``air experiment generalisation`` (its ``generalisation_runs/SETTING-MODEL-seedS`` folders), the count accuracy of
the guide and of ``AIR.infer(refine_steps=K, refine_samples=S)`` on the experiment's own held-out scenes of each
unseen count (the same scenes, so the two are paired) and on new held-out scenes of the training counts.

usage: python benchmarks/generalisation_refine.py EXPERIMENT_DIR [--refine-steps 100] [--refine-samples 128]
       [--runs GLOB] [--scenes N] [--threads 1] [--out FILE]
"""
import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import numpy as np
    import torch

    from attend_infer_repeat import AIR
    from attend_infer_repeat.data import SceneConfig, make_scenes
    from attend_infer_repeat.experiments.generalisation import SETTINGS, GeneralisationConfig, unseen_count_scenes

    from common import record

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment_dir", help="the --out folder of air experiment generalisation")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--refine-samples", type=int, default=128)
    p.add_argument("--runs", default="*-seed*", help="which run folders, a glob (default: all)")
    p.add_argument("--scenes", type=int, default=None, help="the first this many scenes of each set (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    exp = json.loads((Path(a.experiment_dir) / "generalisation.json").read_text())
    cfg = GeneralisationConfig(n_test=exp["config"]["n_test"], data_seed=exp["config"].get("data_seed", 0))
    result = {"benchmark": "generalisation_refine", **record(), "experiment": str(a.experiment_dir),
              "refine_steps": a.refine_steps, "refine_samples": a.refine_samples, "runs": []}
    runs = sorted((Path(a.experiment_dir) / "generalisation_runs").glob(a.runs))
    for run_dir in runs:
        setting, model_name, seed = run_dir.name.rsplit("-", 2)
        if not (run_dir / "last.pt").exists():
            continue
        model = AIR.load(run_dir / "last.pt")
        train_counts, test_counts = SETTINGS[setting]
        sets = {f"unseen_{c}": unseen_count_scenes(cfg, c, setting) for c in test_counts}
        size = model.config.image_size
        sets["training_counts"] = make_scenes("test", cfg.n_test, SceneConfig(
            canvas_size=size, digit_size=cfg.scenes(setting)[1], counts=tuple(train_counts), seed=cfg.data_seed + 3))
        bins = model.config.max_steps + 1
        row = {"setting": setting, "model": model_name, "seed": int(seed[4:]), "run_dir": str(run_dir)}
        for name, scenes in sets.items():
            images, counts = scenes.images[:a.scenes], scenes.counts[:a.scenes]
            t0 = time.time()
            guide = model.infer(images).counts.numpy()
            t1 = time.time()
            refined = model.infer(images, refine_steps=a.refine_steps, refine_samples=a.refine_samples).counts.numpy()
            row[name] = {"n": len(images), "guide_acc": float((guide == counts).mean()),
                         "refined_acc": float((refined == counts).mean()),
                         "guide_histogram": np.bincount(guide, minlength=bins).tolist(),
                         "refined_histogram": np.bincount(refined, minlength=bins).tolist(),
                         "refined_seconds": round(time.time() - t1, 1), "guide_seconds": round(t1 - t0, 2)}
        result["runs"].append(row)
        print(run_dir.name, json.dumps({k: (round(v["guide_acc"], 4), round(v["refined_acc"], 4))
                                        for k, v in row.items() if isinstance(v, dict)}), flush=True)
        if a.out:  # after every run: a long measurement keeps what it has
            Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
