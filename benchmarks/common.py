"""What every benchmark result records about where it was measured (``attend_infer_repeat.provenance``), and the
one way the benchmarks run the real command line."""
import subprocess
import sys

from attend_infer_repeat.provenance import cpu_model, git_commit, machine, record  # noqa: F401


def air(*args: str) -> subprocess.CompletedProcess:
    """``air ARGS`` in this interpreter; the command and its stderr's end as the error if it fails."""
    cmd = [sys.executable, "-m", "attend_infer_repeat.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
