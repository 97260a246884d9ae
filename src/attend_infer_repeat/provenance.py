"""Where a result was measured: the git commit, the CPU model and whether it does bf16 natively (which decides the
precision ``--precision auto`` picks), torch and the core count. Every benchmark result and experiment records it."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout, for an editable install (else no git: "unknown")


def git_commit() -> str:
    """The checked-out commit, with ``+dirty`` when tracked files differ from it."""
    if not (ROOT / "src" / "attend_infer_repeat").is_dir():  # installed from a wheel: no checkout of ours
        return "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def machine() -> dict:
    import torch

    from .runtime import native_bf16

    bf16 = native_bf16(torch.device("cpu"))
    return {"git_commit": git_commit(), "cpu": cpu_model(), "cpus": os.cpu_count(), "native_bf16": bf16,
            "precision_auto": "bf16" if bf16 else "fp32", "torch": torch.__version__,
            "platform": platform.platform()}


def record() -> dict:
    """What a result file starts with: the commit at its top level (where readers look first) and the machine."""
    m = machine()
    return {"git_commit": m["git_commit"], "machine": m}
