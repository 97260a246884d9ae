"""Where and how a run trains, beside the loop in ``train.py``: the device, the precision (bf16 where the
hardware does it natively), distributed processes (torchrun), whether TorchInductor has a C++ compiler to
compile with, and the CPU allocator tuning. None of it changes what is computed, only where and how fast."""
from __future__ import annotations

import os
import re
import resource
import signal
import sys
import threading

import torch
import torch.nn as nn

from .errors import InputError


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of process ``rank`` in a distributed run."""
    return seed + 7919 * (rank + 1)


DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str) -> torch.device:
    """``auto`` (a GPU where there is one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; InputError for any other name
    or for a device this machine (or this torch build) lacks."""
    if not isinstance(name, str) or not (name in DEVICE_NAMES or re.fullmatch(r"cuda:[0-9]{1,3}", name)):
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name} was asked for but no CUDA GPU is available (or this torch build has no "
                         "CUDA); use --device cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def init_distributed(device_type: str) -> tuple[int, int, bool]:
    """(world size, rank, whether this call joined the process group). Under ``torchrun`` (WORLD_SIZE > 1)
    joins the process group: NCCL on GPUs, Gloo on CPUs. A plain ``air train`` is a world of one and touches
    nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, False
    import torch.distributed as dist

    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank(), joined


class LossModule(nn.Module):
    """What DistributedDataParallel wraps: its forward is AIR's training loss (model + baseline), so that
    DDP averages exactly the gradients ``loss.backward()`` produces across processes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.last = None

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        self.last = self.model.loss(x, step)
        return self.last.loss + self.last.baseline_loss


def native_bf16(device: torch.device) -> bool:
    """Whether this device does bf16 matrix products in hardware (not emulated, which would be slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of handing each large one back to the kernel.

    A CPU training step allocates and frees the same large buffers every time (the bf16 copies of the two
    2,500 x 1,024 image-projection weights and their gradients, 5-10 MB each). glibc serves blocks that large
    with fresh ``mmap`` pages and unmaps them when freed, so every step paid hundreds of page faults (kernel time,
    and the page zeroing in memory bandwidth). Raising the mmap threshold to its maximum (32 MB) and the trim
    threshold to 256 MB keeps those blocks in the heap: no faults per step, and faster steps (benchmarks/README.md,
    the CPU allocator). Results are unchanged; freed memory up to 256 MB stays
    with the process. Process-wide and idempotent; returns whether it applied (Linux with glibc only)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2 ** 20) == 1
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, 256 * 2 ** 20) == 1 and ok)
    except (OSError, AttributeError):
        return False


def cxx_compiler_found() -> bool:
    """Whether a C++ compiler TorchInductor could use is on this machine (``$CXX``, or g++/clang++/c++ on PATH)."""
    import shutil

    cxx = os.environ.get("CXX")
    return bool(cxx and shutil.which(cxx)) or any(shutil.which(c) for c in ("g++", "clang++", "c++"))


def peak_rss_gib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 30 if sys.platform == "darwin" else rss / 2 ** 20


def leave_group(joined: bool) -> bool:
    """The end of a distributed run, once its DDP wrapper is dropped: free the reducer (it holds the process
    group) and leave the group this process joined (``joined``), while the interpreter is fully alive. Left to
    interpreter exit, Gloo's threads can outlive their owner and abort the process ("terminate called without an
    active exception"). Returns whether the process is still in a group it joined (no)."""
    import gc

    import torch.distributed as dist

    gc.collect()  # the reducer sits in reference cycles: free it now, not at exit
    if joined and dist.is_initialized():
        dist.destroy_process_group()
    return False


def all_agree(flag: bool, device: torch.device, op: str = "max") -> bool:
    """Combine a yes/no across the processes of a distributed run (max: anyone says yes; min: everyone does)."""
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def catch_ctrl_c(trainer):
    """The first Ctrl-C sets ``trainer.stop_requested``, so the loop stops after the step in progress (and the
    checkpoint and the metrics file agree exactly); a second one interrupts at once. Returns the handler to put
    back (None outside the main thread, where signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    return signal.signal(signal.SIGINT, handler)
