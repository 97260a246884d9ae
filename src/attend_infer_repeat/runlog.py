"""What a run shows and keeps while it trains: the progress bar (tqdm) and the metrics log (``metrics.jsonl``, and
TensorBoard's curves where it is installed)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from .checkpoint import atomic_write_bytes


class Progress:
    """tqdm's progress bar on a terminal; plain lines every 10 s otherwise (CI logs stay readable). The bar runs
    over the budget's fraction (steps, or minutes when those end first), in thousandths."""

    def __init__(self, total_steps: int, minutes: float | None, enabled: bool = True, stream=None):
        stream = sys.stderr if stream is None else stream  # looked up now: sys.stderr may have been replaced
        self.total, self.minutes, self.enabled, self.stream = total_steps, minutes, enabled, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_line = 0.0
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, file=stream, unit="", bar_format="{percentage:3.0f}%|{bar}| {desc}", leave=True,
                            dynamic_ncols=True)

    def update(self, step: int, train_s: float, stats: dict[str, float]) -> None:
        if not self.enabled:
            return
        frac = step / self.total
        if self.minutes:
            frac = max(frac, train_s / (60 * self.minutes))
        frac = min(frac, 1.0)
        left = train_s * (1 - frac) / frac if frac > 0 else float("nan")
        acc = stats.get("eval_acc")
        train_acc = stats.get("train_acc", float("nan"))
        line = (f"step {step}/{self.total}  elbo {stats.get('elbo', float('nan')):8.1f}  "
                f"count acc {'-' if math.isnan(train_acc) else f'{train_acc:.3f}'} (held-out "
                f"{'-' if acc is None else f'{acc:.3f}'})  {stats.get('ips', 0):6.0f} img/s  "
                f"left {_fmt_time(left)}")
        if self.bar is not None:
            self.bar.set_description_str(line, refresh=False)
            self.bar.update(int(1000 * frac) - self.bar.n)
        elif time.time() - self.last_line > 10 or frac >= 1.0:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_line = time.time()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class MetricsLog:
    """Append-only JSONL of metrics (one flushed line per record); TensorBoard too where it is installed."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled  # False in every process of a distributed run but the first
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop records newer than the checkpoint (they will be logged again), atomically."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a killed process
                continue
            # anything else that is not a record of a step (an edited or damaged line) cannot be plotted either
            if isinstance(record, dict) and type(record.get("step")) is int and record["step"] <= step:
                keep.append(line)
        text = "".join(k + "\n" for k in keep)
        atomic_write_bytes(self.path, lambda f: f.write(text.encode()))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "kind"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
