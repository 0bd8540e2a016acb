"""Flows z → z*: planar (paper eq. 3–5), affine coupling and spline coupling, one contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from ml.flows import (
    FLOW_FAMILIES,
    AffineCouplingFlow,
    FlowStack,
    PlanarFlow,
    PlanarFlowStack,
    SplineCouplingFlow,
    build_flow_stack,
)
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projected_columns_equal_the_flows_applied_one_by_one(dtype: torch.dtype) -> None:
    """The scoring path (one product, a T×T recursion, tanh as 2σ(2a) − 1) is the same map as eq. (4)."""
    gen = torch.Generator().manual_seed(5)
    stack = PlanarFlowStack(6, 12).to(dtype)
    _set_params(stack, 3.0, gen, dtype)
    z = torch.randn(400, 6, generator=gen, dtype=torch.float64).to(dtype) * 2
    dims = torch.tensor([4, 0, 2])
    with torch.no_grad():
        want = stack.transform(z)[:, dims]
        got = stack.project_columns(z.T.contiguous(), dims).T
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert (got - want).abs().max().item() < tol * (1 + want.abs().max().item())
    assert (want - z[:, dims]).abs().max().item() > 0.5  # the flows moved the points


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


# ---- every family behind build_flow_stack ------------------------------------------------------


def _randomise(stack: FlowStack, gen: torch.Generator, scale: float = 0.05) -> None:
    """Move a stack away from its identity-like init: planar norms up to 1 (as above); coupling
    weights (last layers start at zero) plus N(0, scale²), which moves standardised data by ~0.1–0.2σ
    per layer while keeping every slope well away from the spline's floor."""
    if isinstance(stack, PlanarFlowStack):
        _set_params(stack, 1.0, gen, next(stack.parameters()).dtype)
        return
    with torch.no_grad():
        for p in stack.parameters():
            p.add_((torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype))


@pytest.mark.parametrize("dim", [1, 2, 5, 10])
@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_every_family_round_trips_in_float32_on_standardised_scale(family: str, dim: int) -> None:
    gen = torch.Generator().manual_seed(dim)
    torch.manual_seed(dim)
    stack = build_flow_stack(family, dim, 4, hidden=32)
    _randomise(stack, gen)
    z = torch.randn(2000, dim, generator=gen) * 3
    check_bijection(stack, z, atol=1e-4)
    with torch.no_grad():
        moved = float((stack(z)[0] - z).abs().mean())
    assert moved > 0.05, f"the randomised {family} stack is still the identity ({moved:.3g})"


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_every_family_log_det_equals_autograd_jacobian(family: str, dim: int) -> None:
    gen = torch.Generator().manual_seed(10 + dim)
    torch.manual_seed(10 + dim)
    stack = build_flow_stack(family, dim, 3, hidden=16).double()
    _randomise(stack, gen, scale=0.2)  # strongly curved: float64 keeps the check exact
    z = torch.randn(6, dim, generator=gen, dtype=torch.float64) * 2
    with torch.no_grad():
        y, log_det = stack(z)
        _, ld_inv = stack.inverse(y)
    for i in range(z.shape[0]):
        jac = jacobian(lambda x: stack(x[None])[0][0], z[i])
        assert float(log_det[i]) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-8)
        jac_inv = jacobian(lambda x: stack.inverse(x[None])[0][0], y[i])
        assert float(ld_inv[i]) == pytest.approx(float(torch.linalg.slogdet(jac_inv)[1]), abs=1e-6)
    assert float((log_det + ld_inv).abs().max()) < 1e-10


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_fresh_stack_of_every_family_is_near_identity(family: str) -> None:
    stack = build_flow_stack(family, 7, 8)
    z = torch.randn(256, 7) * 3
    with torch.no_grad():
        y, log_det = stack(z)
    assert float((y - z).abs().max()) < 0.5
    if family != "planar":  # zero last layers: the identity, up to rounding of zuko's knots
        assert float((y - z).abs().max()) < 1e-5 and float(log_det.abs().max()) < 1e-5


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_float64_deep_copy_gives_the_same_map(family: str) -> None:
    """As the lens's float64 copy of its flows: same map, same inverse, original left in float32."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    stack = build_flow_stack(family, 6, 4, hidden=32)
    _randomise(stack, gen)
    double = copy.deepcopy(stack).to(dtype=torch.float64)
    z = torch.randn(500, 6, generator=gen) * 3
    with torch.no_grad():
        y32, ld32 = stack(z)
        y64, ld64 = double(z.double())
        z64, _ = double.inverse(y64)
        t64 = double.transform(z.double())
    assert y64.dtype == torch.float64 and all(p.dtype == torch.float32 for p in stack.parameters())
    assert float((y64 - y32.double()).abs().max()) < 1e-4
    assert float((ld64 - ld32.double()).abs().max()) < 1e-4
    assert float((z64 - z.double()).abs().max()) < 1e-9
    assert torch.allclose(t64, y64, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_transform_equals_forward_for_every_family(family: str) -> None:
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    stack = build_flow_stack(family, 5, 3, hidden=16)
    _randomise(stack, gen)
    z = torch.randn(64, 5, generator=gen)
    with torch.no_grad():
        assert torch.allclose(stack.transform(z), stack(z)[0], atol=1e-6)


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_gradients_reach_every_parameter_of_every_family(family: str) -> None:
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    stack = build_flow_stack(family, 6, 3, hidden=16)
    _randomise(stack, gen)  # from the zero last layers alone, earlier layers get no gradient yet
    y, ld = stack(torch.randn(32, 6, generator=gen))
    (y.square().sum() + ld.sum()).backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0, name


def test_fresh_coupling_stack_learns_from_its_zero_init() -> None:
    """Zero last layers still get a gradient, so training leaves the identity."""
    stack = build_flow_stack("spline", 4, 2, hidden=8)
    y, ld = stack(torch.randn(32, 4) * 2)
    (y.square().sum() - ld.sum()).backward()
    last = stack.flows[0].net[-1]
    assert float(last.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_zero_flows_is_the_identity(family: str) -> None:
    stack = build_flow_stack(family, 3, 0)
    z = torch.randn(10, 3)
    y, ld = stack(z)
    assert torch.equal(y, z) and torch.equal(ld, torch.zeros(10))
    assert torch.equal(stack.inverse(z)[0], z) and torch.equal(stack.transform(z), z)


def test_planar_family_is_the_planar_stack() -> None:
    stack = build_flow_stack("planar", 4, 5)
    assert type(stack) is PlanarFlowStack and len(stack.flows) == 5 and stack.dim == 4
    assert all(type(f) is PlanarFlow for f in stack.flows)


def test_coupling_stacks_alternate_the_transformed_half() -> None:
    for family, cls in (("coupling", AffineCouplingFlow), ("spline", SplineCouplingFlow)):
        stack = build_flow_stack(family, 5, 4, hidden=8)
        assert stack.dim == 5
        assert [(type(f), f.mask_parity) for f in stack.flows] == [(cls, t % 2) for t in range(4)]
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(50, 5, generator=gen)
    for parity, kept in ((0, slice(0, 2)), (1, slice(2, 5))):
        f = AffineCouplingFlow(5, 8, mask_parity=parity)
        _randomise(FlowStack([f]), gen, scale=0.3)
        with torch.no_grad():
            y, _ = f(z)
        assert torch.equal(y[:, kept], z[:, kept]) and not torch.allclose(y, z)


def test_one_dimensional_coupling_is_a_learnt_elementwise_map() -> None:
    for f in (AffineCouplingFlow(1, mask_parity=1), SplineCouplingFlow(1, mask_parity=0)):
        assert f.net is None
        _randomise(FlowStack([f]), torch.Generator().manual_seed(7), scale=0.5)
        z = torch.linspace(-4, 4, 101)[:, None]
        y, _ = f(z)
        assert bool((y[1:] > y[:-1]).all()) and not torch.allclose(y, z)
        check_bijection(f, z, atol=1e-5)


def test_spline_is_the_identity_outside_its_bound() -> None:
    f = SplineCouplingFlow(4, 16, bound=5.0, mask_parity=0)
    _randomise(FlowStack([f]), torch.Generator().manual_seed(8), scale=0.3)
    z = torch.randn(200, 4) * 3
    z[:, 2:] = torch.sign(z[:, 2:]) * (5.01 + z[:, 2:].abs())  # the transformed half, outside ±5
    with torch.no_grad():
        y, ld = f(z)
    assert torch.equal(y, z) and torch.equal(ld, torch.zeros(200))
    inner = torch.randn(200, 4)
    assert not torch.allclose(f(inner)[0], inner)


def test_spline_inverse_stays_finite_for_extreme_float32_splines() -> None:
    """Steep bins beside flat ones: the inverse runs in float64, so zuko's quadratic never NaNs."""
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(9)
    stack = build_flow_stack("spline", 10, 4)
    _randomise(stack, gen, scale=0.3)
    z = torch.randn(2000, 10, generator=gen) * 3
    with torch.no_grad():
        y, _ = stack(z)
        z_back, ld_inv = stack.inverse(y)
    assert torch.isfinite(z_back).all() and torch.isfinite(ld_inv).all()


def test_build_flow_stack_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"'radial'.*planar, coupling, spline"):
        build_flow_stack("radial", 3, 2)
    for family in FLOW_FAMILIES:
        with pytest.raises(ValueError, match="n_flows"):
            build_flow_stack(family, 3, -1)
    with pytest.raises(ValueError, match="dim"):
        AffineCouplingFlow(0)
    with pytest.raises(ValueError, match="mask_parity"):
        SplineCouplingFlow(3, mask_parity=2)
    with pytest.raises(ValueError, match="bins"):
        SplineCouplingFlow(3, bins=0)
    with pytest.raises(ValueError, match="bound"):
        SplineCouplingFlow(3, bound=0.0)
    with pytest.raises(ValueError, match="hidden"):
        build_flow_stack("coupling", 3, 2, hidden=0)
