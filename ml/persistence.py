"""One persistence interface for every estimator: ``save``/``load`` (files) and ``to_bytes``/``from_bytes``.

A checkpoint is a dict of plain types and tensors, written by ``torch.save`` and read back with
``weights_only=True`` (``ml.device``), so loading runs no pickled code. An estimator supplies
``_checkpoint()`` (its fitted state as such a dict) and ``_restore(ckpt, device)`` (the inverse).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from ml.device import load_checkpoint, resolve_device, save_checkpoint

T = TypeVar("T", bound="Checkpointed")


class Checkpointed:
    """``save(path)``, ``load(path or bytes)``, ``to_bytes()`` and ``from_bytes(bytes)``, alike for all models."""

    def _checkpoint(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def _restore(cls: type[T], ckpt: dict[str, Any], device: str) -> T:  # pragma: no cover
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The checkpoint as bytes, e.g. for a database column."""
        out = save_checkpoint(self._checkpoint())
        assert out is not None
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint to ``path``."""
        save_checkpoint(self._checkpoint(), path)

    @classmethod
    def load(cls: type[T], source: str | os.PathLike[str] | bytes, device: str = "auto") -> T:
        """A fitted model from a file written by ``save`` (or bytes from ``to_bytes``), onto ``device``."""
        if isinstance(source, bytearray | memoryview):
            source = bytes(source)
        return cls._restore(load_checkpoint(source, resolve_device(device)), device)

    @classmethod
    def from_bytes(cls: type[T], data: bytes, device: str = "auto") -> T:
        """Inverse of ``to_bytes``."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"from_bytes needs bytes, got {type(data).__name__}")
        return cls.load(bytes(data), device=device)
