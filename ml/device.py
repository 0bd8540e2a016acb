"""Where models run: the ``device`` setting, and checkpoints moved onto the chosen device.

Every model in ``ml`` takes ``device="auto" | "cpu" | "cuda" | "cuda:N"`` and resolves it here, so
a typo or a missing GPU fails the same way everywhere.
"""

from __future__ import annotations

import ctypes
import io
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """Turn the ``device`` setting into a ``torch.device`` ("auto" → cuda if available, else cpu)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
        try:
            dev = torch.device(name)
        except RuntimeError as exc:  # e.g. "cuda:x"
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return dev
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


@dataclass(frozen=True)
class DeviceSizes:
    """How much work one step of the lens takes on a device: a setting left unset takes these."""

    lens_batch_size: int  # items per ELBO minibatch
    lens_lr: float  # Adam's step
    score_chunk: int  # items per chunk of Monte-Carlo pool scoring
    lens_threads: int | None = None  # torch's intra-op threads while the lens trains (None: as they are)
    compile_step: bool = False  # torch.compile the lens's training step (``ml.lens.train.Stepper``)
    selection_batched: bool = False  # the selection's k folds as one vmapped model (``ml.lens.folds``)


# On a CPU a step's cost grows with its batch, and 256 items at 5e-3 is what every measurement of the
# lens was made with. A GPU is bound by launches, not arithmetic: one step of 4,096 items costs what
# one of 256 does (an epoch of 60k items: 14.2 s at 256, 0.43 s at 4,096 on an H200), and scoring
# chunks of 131,072 items ran 3× faster than chunks of 8,192 there.
# A CPU step of the lens is thousands of operations on a few hundred items each: a second intra-op
# thread only adds a hand-off per operation. On this project's 2-core machine one step took 15.3 ms
# on two threads and 8.6 ms on one (``lenslab bench train``), so the lens trains on one thread and
# leaves the other cores to the server and to the next job.
# Scoring is bound by memory traffic on a CPU: chunks of 2,048 items (131,072 Monte-Carlo points, 16 MB
# of flow activations) stay in the last-level cache, where chunks of 8,192 did not; measured on one
# thread here with the heap kept (``retain_freed_memory``), 57–61k items/s at 2,048, 49–54k at 1,024,
# 41–51k at 512.
CPU_SIZES = DeviceSizes(lens_batch_size=256, lens_lr=5e-3, score_chunk=2048, lens_threads=1)
# Compiling and batching the selection's folds pay where launches dominate: on CUDA, where compiling
# also captures the step as a CUDA graph and k batched folds launch what one fold does. On this
# project's CPU a compiled step ran slower than the fused eager one (17.6 against 11.0 ms) after a
# minute of compiling, and three folds batched by vmap took 41 ms a step against 29 ms for three
# fused steps in turn, so a CPU trains eagerly, one fold after another.
CUDA_SIZES = DeviceSizes(
    lens_batch_size=4096, lens_lr=5e-3, score_chunk=131_072, compile_step=True, selection_batched=True
)
# The lens's epoch count aims at ~1,500 Adam steps (``ml.lens.train.auto_epochs``, at most 200 epochs):
# a batch above 1/8 of the pool would cut that budget, so a device's batch is capped there (never
# below the CPU's).
MIN_STEPS_PER_EPOCH = 8


def sizes_for(device: torch.device, n_items: int | None = None) -> DeviceSizes:
    """The sizes for ``device``; with ``n_items`` (the pool), a GPU batch capped at 1/8 of the pool."""
    if device.type != "cuda":
        return CPU_SIZES
    if n_items is None:
        return CUDA_SIZES
    batch = max(CPU_SIZES.lens_batch_size, min(CUDA_SIZES.lens_batch_size, n_items // MIN_STEPS_PER_EPOCH))
    return replace(CUDA_SIZES, lens_batch_size=batch)


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (None: unchanged), then restored.

    Set and restored on the calling thread: with OpenMP the count a thread's parallel regions use is
    that thread's own (a fit in a worker thread leaves the web's threads their count), and threads
    started inside the block inherit ``n``.
    """
    if n is None or n == torch.get_num_threads():
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def device_name(device: torch.device, threads: int | None = None) -> str:
    """What a job record shows: the GPU's model name, or "cpu (N threads)" (``threads``: the count a fit
    ran with, when it set its own; else the process's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = threads if threads is not None else torch.get_num_threads()
    return f"cpu ({n} thread{'' if n == 1 else 's'})"


_SEED_LOCK = threading.Lock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build modules under a fixed seed without disturbing the caller's global RNG (thread-safe).

    ``nn.Module`` initialisers draw from torch's global CPU generator; this forks it, seeds it, and
    holds a lock so two fits starting at once in worker threads cannot interleave their draws.
    """
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> bytes | None:
    """Write a checkpoint dict (config + state, plain types and tensors only) to ``path``, or return bytes."""
    if path is None:
        buf = io.BytesIO()
        torch.save(dict(checkpoint), buf)
        return buf.getvalue()
    torch.save(dict(checkpoint), os.fspath(path))
    return None


def load_checkpoint(source: str | os.PathLike[str] | bytes, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` with ``weights_only=True`` onto ``device``."""
    f: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else os.fspath(source)
    try:
        ckpt = torch.load(f, map_location=device, weights_only=True)
    except OSError:
        raise  # a missing or unreadable file is the caller's error to see as such
    except Exception as exc:  # torch raises many types on corrupt input (UnpicklingError, RuntimeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"not a readable lenslab checkpoint: {first}") from exc
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state" not in ckpt:
        raise ValueError("not a lenslab checkpoint: expected a dict with 'config' and 'state'")
    return ckpt


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(mmap_threshold_mb: int = 64, trim_threshold_mb: int = 256) -> bool:
    """Keep freed memory in this process's heap instead of returning it to the OS (glibc only).

    Why: scoring and training allocate the same large tensors chunk after chunk. glibc hands blocks of
    a few MB back to the OS when they are freed, so every chunk faulted its pages in again: 80,000 page
    faults and a third of the time of scoring 20,000 items (and the cold fresh pages slowed the
    kernels that wrote them). Blocks below ``mmap_threshold_mb`` now come from the heap, and up to
    ``trim_threshold_mb`` of free heap is kept for the next chunk. Process-wide; the worker calls it
    at start. Returns whether the C library took the settings (False on other C libraries).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20)
    return bool(ok_mmap) and bool(ok_trim)
