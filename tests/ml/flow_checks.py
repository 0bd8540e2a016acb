"""One reusable check for every bijection in ``ml.flows`` (shape, dtype, round trip, log-dets)."""

from __future__ import annotations

import torch

from ml.flows import Flow


def check_bijection(flow: Flow, z: torch.Tensor, *, atol: float) -> float:
    """Assert the flow's contract on ``z``; return the max round-trip error."""
    with torch.no_grad():
        y, ld_fwd = flow(z)
        z_back, ld_inv = flow.inverse(y)
    assert y.shape == z.shape and z_back.shape == z.shape
    assert y.dtype == z.dtype and z_back.dtype == z.dtype
    assert ld_fwd.shape == (z.shape[0],) and ld_inv.shape == (z.shape[0],)
    assert torch.isfinite(y).all() and torch.isfinite(ld_fwd).all()
    err = float((z_back - z).abs().max())
    assert err < atol, f"round trip error {err:.3g} ≥ {atol}"
    # forward and inverse log-dets cancel
    assert float((ld_fwd + ld_inv).abs().max()) < max(atol, 1e-5) * 10
    return err
