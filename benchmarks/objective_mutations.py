"""Do the tests guard the objective? Breaks the ELBO or its gradient estimator in known ways, one at a time, in a
copy of the package, and runs the objective's tests against each copy: every mutation must make them fail.

The mutations are the silent ones (each still trains and gives finite numbers): dropping KL(z_what), dropping the
Gaussian likelihood's -log(sigma), flipping the sign of the z_pres surrogate, biasing the Rao-Blackwellised
learning signal (two ways), and, for the enumerated ELBO, dropping the count KL or cutting the gradient through
q(n). Writes JSON: for each mutation, whether the tests failed and which.

usage: python benchmarks/objective_mutations.py [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ["tests/model/test_estimators.py", "tests/model/test_model.py", "tests/model/test_objective.py"]

#: (name, file in the package, the text as it is, the text as the mutation makes it)
MUTATIONS = [
    ("nvil ELBO without KL(z_what)", "model/air.py",
     "object_cost = present * (kl_where + kl_what)", "object_cost = present * kl_where"),
    ("enumerated ELBO without KL(z_what)", "model/air.py",
     "object_cost = kl_where + kl_what  # (B, N)", "object_cost = kl_where  # (B, N)"),
    ("Gaussian likelihood without -log(sigma)", "model/air.py",
     "- math.log(sigma) - 0.5 * math.log(2 * math.pi)", "- 0.5 * math.log(2 * math.pi)"),
    ("z_pres surrogate with its sign flipped", "model/objective.py",
     "surrogate = -((signal - baseline.detach()) * log_q_pres).sum(-1)",
     "surrogate = ((signal - baseline.detach()) * log_q_pres).sum(-1)"),
    ("learning signal without the step's own object cost", "model/air.py",
     "signal = log_lik[:, None] - reverse_cumsum(object_cost)",
     "signal = log_lik[:, None] - (reverse_cumsum(object_cost) - object_cost)"),
    ("learning signal without the likelihood", "model/air.py",
     "signal = log_lik[:, None] - reverse_cumsum(object_cost)", "signal = -reverse_cumsum(object_cost)"),
    ("enumerated ELBO without the count KL", "model/air.py",
     "elbo = (q_count * (log_lik - object_costs)).sum(1) - kl_count",
     "elbo = (q_count * (log_lik - object_costs)).sum(1)"),
    ("enumerated ELBO with q(n) detached", "model/air.py",
     "q_count = log_q_count.exp()", "q_count = log_q_count.exp().detach()"),
]


def run(mutation: tuple[str, str, str, str], workdir: Path) -> dict:
    name, file, old, new = mutation
    package = workdir / "src" / "attend_infer_repeat"
    shutil.rmtree(workdir / "src", ignore_errors=True)
    shutil.copytree(ROOT / "src" / "attend_infer_repeat", package)
    if file:
        path = package / file
        text = path.read_text()
        if text.count(old) != 1:
            return {"mutation": name, "error": f"the text to mutate is not in {file} exactly once"}
        path.write_text(text.replace(old, new))
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"), AIR_COMPILE="off")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    return {"mutation": name, "file": file, "tests_failed": proc.returncode != 0, "failing_tests": failed,
            "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results" / "objective_mutations.json"))
    a = p.parse_args()
    sys.path.insert(0, str(HERE))
    from common import record

    with tempfile.TemporaryDirectory() as tmp:
        control = run(("none (the package as it is)", "", "", ""), Path(tmp))
        print(json.dumps({k: control.get(k) for k in ("mutation", "tests_failed", "summary")}), flush=True)
        results = []
        for m in MUTATIONS:
            results.append(run(m, Path(tmp)))
            print(json.dumps({k: results[-1].get(k) for k in ("mutation", "tests_failed", "summary")}), flush=True)
    out = {"benchmark": "objective_mutations", **record(), "tests": TESTS,
           "control_passed": not control["tests_failed"], "mutations": results,
           "all_caught": not control["tests_failed"] and all(r.get("tests_failed") for r in results)}
    Path(a.out).write_text(json.dumps(out, indent=2))
    print("all caught" if out["all_caught"] else "NOT all caught")


if __name__ == "__main__":
    main()
