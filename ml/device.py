"""Where models run: the ``device`` setting, and checkpoints moved onto the chosen device.

Every model in ``ml`` takes ``device="auto" | "cpu" | "cuda" | "cuda:N"`` and resolves it here, so
a typo or a missing GPU fails the same way everywhere.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
