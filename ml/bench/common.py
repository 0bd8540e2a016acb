"""Shared pieces of the benchmarks: machine description, peak memory, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and from which code: the commit, whether the tree had
    uncommitted changes, and the command that produced them (so a stale result can be told apart)."""
    import numpy as np
    import torch

    return {
        **source_revision(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def source_revision() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout this code runs from (None when it is not a git checkout).

    ``dirty`` ignores ``benchmarks/``: result files written by an earlier run do not change the code.
    """
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks")
    return {"commit": commit, "dirty": None if commit is None or status is None else bool(status)}


def cpu_model() -> str | None:
    """The CPU's model name (Linux), since kernels and rounding differ between CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest wall time of ``repeats`` calls of ``fn`` (the least disturbed run), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_isolated(module: str, args: Sequence[str]) -> dict[str, Any]:
    """Run ``python -m module args…`` in a fresh process and parse the JSON it prints last.

    A fresh process gives an honest peak RSS and lets the thread count be set before torch starts.
    """
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_results(name: str, payload: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``<out_dir>/<name>.json`` and return its path."""
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (dicts) restricted to ``columns``."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):  # before int: a bool is an int to Python
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)
