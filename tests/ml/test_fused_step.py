"""The fused training step computes what the eager one does: the planar stack as one autograd node
(``ml.flows._PlanarStack``) and one pass for the ELBO and α batches (``LensModule.training_terms``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ml.attributes import Attribute
from ml.flows import PlanarFlowStack
from ml.lens.config import LensConfig
from ml.lens.model import LensModule
from ml.lens.train import assign_dims, label_tensors, train

ATTRS = [
    Attribute("digit", "categorical", tuple(str(i) for i in range(10))),
    Attribute("thick", "ordinal", tuple("abcde")),
    Attribute("slant", "continuous", low=-3.0, high=3.0),
]


def _bent_stack(dim: int, n_flows: int, dtype: torch.dtype) -> PlanarFlowStack:
    """A stack far from the identity (large û), so every flow's tanh bends the data."""
    torch.manual_seed(3)
    stack = PlanarFlowStack(dim, n_flows).to(dtype)
    with torch.no_grad():
        for f in stack.flows:
            f.u.mul_(40.0)
    return stack


def _outputs_and_grads(stack: PlanarFlowStack, z: torch.Tensor, fused: bool) -> list[torch.Tensor]:
    stack.fused = fused
    stack.zero_grad()
    z = z.detach().clone().requires_grad_(True)
    y, log_det = stack(z)
    gen = torch.Generator().manual_seed(7)
    gy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    gl = torch.randn(log_det.shape, generator=gen, dtype=y.dtype)
    ((y * gy).sum() + (log_det * gl).sum()).backward()
    return [y.detach(), log_det.detach(), z.grad] + [p.grad for p in stack.parameters()]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_the_fused_planar_stack_gives_the_eager_values_and_gradients(dtype, tol):
    stack = _bent_stack(10, 32, dtype)
    z = torch.randn(300, 10, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 2
    fused, eager = _outputs_and_grads(stack, z, True), _outputs_and_grads(stack, z, False)
    for a, b in zip(fused, eager, strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max())), float((a - b).abs().max())
    # A broken backward (e.g. the log-det's ∂/∂h dropped) misses by far more than the tolerance.
    assert float(fused[2].abs().max()) > 1.0
    stack.fused = True
    with torch.no_grad():
        assert torch.allclose(stack.transform(z), eager[0], rtol=tol, atol=tol * float(eager[0].abs().max()))


def test_the_fused_planar_stack_passes_gradcheck():
    stack = _bent_stack(4, 5, torch.float64)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    terms = [t.detach().requires_grad_(True) for t in stack.stacked_terms(torch.float64)]
    from ml.flows import _PlanarStack

    assert torch.autograd.gradcheck(lambda z, *p: _PlanarStack.apply(z, *p), (z, *terms))


def _step_loss_and_grads(fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    cfg = LensConfig(n_flows=16, hidden=32, fused_step=fused)
    torch.manual_seed(0)
    mod = LensModule(cfg, 8, ATTRS, assign_dims(ATTRS, 1, 8)).double()
    mod.flows.fused = fused
    gen = np.random.default_rng(0)
    n, m = 64, 32
    z = torch.as_tensor(gen.normal(size=(n + m, 8)))
    raw = {
        "digit": np.where(gen.random(n + m) < 0.5, gen.integers(0, 10, n + m), -1),
        "thick": np.where(gen.random(n + m) < 0.5, gen.integers(0, 5, n + m), -1),
        "slant": np.where(gen.random(n + m) < 0.5, gen.normal(size=n + m), np.nan),
    }
    s = {k: v.double() for k, v in label_tensors(ATTRS, raw, torch.device("cpu")).items()}
    batch, lab = {k: v[:n] for k, v in s.items()}, {k: v[n:] for k, v in s.items()}
    # The same noise in both paths: the fused pass draws the two batches' ε as one block.
    torch.manual_seed(1)
    if fused:
        elbo, _, sup = mod.training_terms(z[:n], batch, z[n:], lab)
    else:
        noise = torch.randn(n + m, 8, dtype=torch.float64)
        draws = iter([noise[:n], noise[n:]])
        original = torch.randn_like
        torch.randn_like = lambda t, **kw: next(draws) if t.shape == (n, 8) or t.shape == (m, 8) else original(t, **kw)
        try:
            elbo, _ = mod.elbo_and_sample(z[:n], batch)
            sup = mod.supervised_terms(z[n:], lab)
        finally:
            torch.randn_like = original
    loss = -elbo.mean() - 3.0 * sup.mean()
    mod.zero_grad()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in mod.parameters() if p.grad is not None]


def test_the_fused_step_gives_the_eager_loss_and_gradients():
    (loss_f, grads_f), (loss_e, grads_e) = _step_loss_and_grads(True), _step_loss_and_grads(False)
    assert abs(float(loss_f - loss_e)) <= 1e-9 * abs(float(loss_e))
    assert len(grads_f) == len(grads_e) > 20
    for a, b in zip(grads_f, grads_e, strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def _ops_per_step(fused: bool) -> float:
    rng = np.random.default_rng(0)
    n = 1280
    Z = rng.normal(size=(n, 10)).astype(np.float32)
    y, t = rng.integers(0, 10, n), rng.integers(0, 5, n)
    y[200:], t[200:] = -1, -1
    cfg = LensConfig(epochs=2, batch_size=256, propagation_weight=0.0, fused_step=fused)
    attrs = ATTRS[:2]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(Z, {"digit": y, "thick": t}, attrs, cfg, device=torch.device("cpu"))
    return sum(1 for e in prof.events() if e.name.startswith("aten::")) / 10


def test_the_fused_step_runs_far_fewer_operations():
    # Measured with the default 32 flows: 15,500 aten calls (nested ones included) per step eager, 5,400 fused.
    fused, eager = _ops_per_step(True), _ops_per_step(False)
    assert fused < 0.6 * eager, (fused, eager)


def _fit_history(compile_step: bool) -> tuple[list[float], str]:
    rng = np.random.default_rng(0)
    n = 512
    Z = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.where(np.arange(n) < 100, (Z[:, 0] > 0).astype(int) * 9, -1)
    t = np.where(np.arange(n) < 100, rng.integers(0, 5, n), -1)
    cfg = LensConfig(n_flows=3, hidden=16, epochs=2, batch_size=128, compile_step=compile_step, seed=4)
    fit = train(Z, {"digit": y, "thick": t}, ATTRS[:2], cfg, device=torch.device("cpu"))
    return fit.history, fit.step_mode


def test_a_compiled_step_trains_as_the_eager_one_and_says_so(monkeypatch):
    """The CUDA default (``compile_step``), forced on the CPU: the same losses, and the mode recorded.

    Compiled code draws q0's noise from eager's generator here (``fallback_random``), so both fits see
    the same noise; compiled kernels still round differently (fused reductions), so two epochs of
    losses agree to 1e-4 relative, not bit for bit. Different noise alone moves them by ~1e-3.
    """
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    eager, mode_e = _fit_history(False)
    compiled, mode_c = _fit_history(True)
    assert mode_e == "eager"
    assert mode_c == "compiled", mode_c
    assert np.allclose(compiled, eager, rtol=1e-4), (compiled, eager)


def test_a_step_that_fails_to_compile_falls_back_to_eager(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("backend compiler failed\ndetails")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    eager, _ = _fit_history(False)
    history, mode = _fit_history(True)
    assert mode == "eager (compiling failed: RuntimeError: backend compiler failed)"
    assert history == eager  # the same eager steps from the first one on


def test_a_step_whose_compiled_backward_fails_is_taken_again_eagerly(monkeypatch):
    class FailingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def, override]
            return x.clone()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def, override]
            raise RuntimeError("backward compiler failed")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: lambda *args: FailingBackward.apply(fn(*args)))
    history, mode = _fit_history(True)
    assert mode == "eager (compiling failed: RuntimeError: backward compiler failed)"
    eager, _ = _fit_history(False)
    # The failed step's forward drew q0's noise before the eager retry: close to, not equal to, eager.
    assert np.all(np.isfinite(history)) and np.allclose(history, eager, rtol=0.05)
