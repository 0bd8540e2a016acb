"""Planar flows: invertibility constraint, exact inverse, log-determinants (paper eq. 3–5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from ml.flows import PlanarFlow, PlanarFlowStack
from tests.ml.flow_checks import check_bijection


def _set_params(stack: PlanarFlowStack, max_norm: float, gen: torch.Generator, dtype: torch.dtype) -> None:
    """Random directions, norms of u and w drawn up to ``max_norm``, b ~ N(0, 1)."""
    with torch.no_grad():
        for f in stack.flows:
            assert isinstance(f, PlanarFlow)
            for p in (f.u, f.w):
                d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                norm = 0.1 + (max_norm - 0.1) * torch.rand((), generator=gen, dtype=torch.float64)
                p.copy_((d / d.norm() * norm).to(dtype))
            f.b.copy_(torch.randn((), generator=gen, dtype=torch.float64).to(dtype))


@pytest.mark.parametrize("seed", range(5))
def test_extreme_parameters_round_trip_exactly_in_double_precision(seed: int) -> None:
    """‖u‖, ‖w‖ up to 10 (wᵀu down to −100, where a naive m(x) = −1 + log(1 + eˣ) underflows to −1)."""
    gen = torch.Generator().manual_seed(seed)
    stack = PlanarFlowStack(10, 16).double()
    _set_params(stack, 10.0, gen, torch.float64)
    z = torch.randn(10_000, 10, generator=gen, dtype=torch.float64)
    check_bijection(stack, z, atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_random_parameters_round_trip_in_float32(seed: int) -> None:
    """Norms up to 1 in float32 (the lens's operating range; z* itself is kept in float64)."""
    gen = torch.Generator().manual_seed(seed)
    stack = PlanarFlowStack(10, 16)
    _set_params(stack, 1.0, gen, torch.float32)
    z = torch.randn(10_000, 10, generator=gen)
    check_bijection(stack, z, atol=1e-4)


def test_constraint_keeps_w_dot_u_hat_above_minus_one_for_extreme_u() -> None:
    f = PlanarFlow(4).double()
    with torch.no_grad():
        f.w.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
        for wu in (-1e4, -100.0, -1.0, 0.0, 50.0, 1e4):
            f.u.copy_(torch.tensor([wu / 10.0, 3.0, 0.0, 0.0], dtype=torch.float64))
            c = float(f.w @ f.u_hat())
            expected = max(math.log1p(math.exp(wu)) - 1.0 if wu < 700 else wu - 1.0, -1.0 + 1e-6)
            assert c == pytest.approx(expected, rel=1e-9, abs=1e-12)
            assert c > -1.0 and math.isfinite(c)


@pytest.mark.parametrize("n_flows", [1, 4])
def test_log_det_equals_autograd_jacobian(n_flows: int) -> None:
    gen = torch.Generator().manual_seed(1)
    stack = PlanarFlowStack(5, n_flows).double()
    _set_params(stack, 3.0, gen, torch.float64)
    z = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        _, log_det = stack(z)
    for i in range(z.shape[0]):
        jac = jacobian(lambda x: stack(x[None])[0][0], z[i])
        assert float(log_det[i]) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-8)
        # and the inverse's log-det is that of the inverse map's Jacobian
    y, _ = stack(z)
    _, ld_inv = stack.inverse(y)
    for i in range(3):
        jac_inv = jacobian(lambda x: stack.inverse(x[None])[0][0], y[i])
        assert float(ld_inv[i]) == pytest.approx(float(torch.linalg.slogdet(jac_inv)[1]), abs=1e-6)


def test_inverse_recovers_points_where_tanh_saturates() -> None:
    """Large |wᵀz| puts the root on the edge of the bracket; it must still be found."""
    f = PlanarFlow(3).double()
    with torch.no_grad():
        f.u.copy_(torch.tensor([3.0, 1.0, 0.0]))
        f.w.copy_(torch.tensor([7.0, 0.5, 1.0]))
        f.b.fill_(-1.3)
    z = torch.randn(5000, 3, dtype=torch.float64) * 5
    check_bijection(f, z, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 2, 10, 64])
def test_fresh_stack_is_near_identity_and_invertible(dim: int) -> None:
    stack = PlanarFlowStack(dim, 8)
    z = torch.randn(256, dim)
    y, _ = stack(z)
    assert float((y - z).abs().max()) < 0.5
    check_bijection(stack, z, atol=1e-4)


def test_gradients_reach_every_parameter() -> None:
    stack = PlanarFlowStack(6, 3)
    y, ld = stack(torch.randn(32, 6))
    (y.square().sum() + ld.sum()).backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0, name


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="dim"):
        PlanarFlow(0)
    with pytest.raises(ValueError, match="n_flows"):
        PlanarFlowStack(3, -1)
