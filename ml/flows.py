"""Invertible maps from z to z* (paper section 2, eq. 2–5): three flow families, one interface.

* planar flows (Rezende & Mohamed, 2015), the paper's choice, with an exact inverse;
* affine coupling layers, RealNVP (Dinh, Sohl-Dickstein & Bengio, 2017);
* rational-quadratic spline coupling layers, Neural Spline Flows (Durkan et al., 2019), whose
  spline is zuko's ``MonotonicRQSTransform``.

Every bijection here follows one interface: ``forward(z) -> (y, log_det)`` and
``inverse(y) -> (z, log_det)``, where ``log_det`` is log|det ∂out/∂in| per row, so the
log-determinants of a round trip cancel. ``build_flow_stack`` makes a stack of any family.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from zuko.transforms import MonotonicRQSTransform

# Newton steps of the scalar inverse; each halves the bracket at worst, so 60 always suffice for
# float64 even on the widest bracket (|w·û| ≤ ‖w‖‖û‖), and Newton ends far sooner in practice.
_MAX_ROOT_ITERS = 60

# Flows per block of the scoring recursion (``PlanarFlowStack.project_columns``).
RECURSION_BLOCK = 8


class Flow(nn.Module):
    """An invertible map with a tractable log-determinant of its Jacobian."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, d) -> (B, d), (B,)
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, d) -> (B, d), (B,)
        raise NotImplementedError


# Floor of wᵀû above −1: −1 + softplus(x) rounds to exactly −1 for x < −37 (float64), where the
# flow would stop being strictly monotone along w.
_MIN_SLOPE = 1e-6


def _m(x: torch.Tensor) -> torch.Tensor:
    """m(x) = −1 + softplus(x): maps any real to (−1, ∞), Rezende & Mohamed (2015) App. A.1.

    ``F.softplus`` switches to the identity for large x and uses log1p(exp(x)) otherwise, so it
    never overflows (a naive log(1 + eˣ) is inf for x > 88 in float32).
    """
    return (F.softplus(x) - 1.0).clamp_min(_MIN_SLOPE - 1.0)


class PlanarFlow(Flow):
    """f(z) = z + û·tanh(wᵀz + b), eq. (4), with û constrained so that f is invertible.

    The constraint (Rezende & Mohamed, App. A.1) is û = u + (m(wᵀu) − wᵀu)·w/‖w‖², which makes
    wᵀû = m(wᵀu) > −1; then α ↦ α + (wᵀû)·tanh(α + b) is strictly increasing and f is a bijection.
    """

    def __init__(self, dim: int, init_scale: float = 0.01) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be ≥ 1, got {dim}")
        self.dim = dim
        # A small u makes a fresh flow close to the identity (a fresh lens has z* ≈ z), while a
        # unit-scale w and spread b put tanh's bend inside the data: with a small w too the flow
        # would stay nearly linear and its gradient towards curvature would vanish.
        w = torch.randn(dim) / math.sqrt(dim)
        # m(wᵀu) = 0 at wᵀu = log(e − 1), where the constraint leaves û = u minus that w-part:
        # adding it makes û the small random part, so a fresh flow is close to the identity.
        u = torch.randn(dim) * init_scale
        u = u - (u @ w) * w / (w @ w) + math.log(math.e - 1.0) * w / (w @ w)
        self.u = nn.Parameter(u)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.randn(()) * 0.5)

    def u_hat(self) -> torch.Tensor:
        """The constrained û with wᵀû = m(wᵀu) > −1."""
        w, u = self.w, self.u
        wu = w @ u
        w_sq = (w @ w).clamp_min(1e-12)  # w = 0 makes f the identity whatever û is
        return u + (_m(wu) - wu) * w / w_sq

    def _terms(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        u_hat = self.u_hat()
        # wᵀû equals m(wᵀu) analytically; taking it from m directly keeps it > −1 after rounding.
        # A select, not a Python branch on the device's value: no host round trip per flow.
        c = torch.where((self.w @ self.w) > 1e-12, _m(self.w @ self.u), self.w @ u_hat).to(dtype)
        return u_hat.to(dtype), self.w.to(dtype), self.b.to(dtype), c

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat, w, b, c = self._terms(z.dtype)
        h = torch.tanh(z @ w + b)  # (B,)
        y = z + h[:, None] * u_hat[None, :]  # (B, d)
        # det(I + û ψᵀ) = 1 + ψᵀû with ψ = (1 − h²) w, so the log-det is log1p((1 − h²)·wᵀû) (eq. 3).
        log_det = torch.log1p((1.0 - h * h) * c)
        return y, log_det

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) without the log-determinant: the fast path of Monte-Carlo scoring. (B, d) -> (B, d)"""
        u_hat, w, b, _ = self._terms(z.dtype)
        h = torch.tanh(torch.addmv(b.expand(z.shape[0]), z, w))
        return torch.addr(z, h, u_hat)

    @torch.no_grad()
    def _solve_alpha(self, target: torch.Tensor, c: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Solve α + c·tanh(α + b) = target for α, elementwise (vectorised safeguarded Newton).

        g(α) = α + c·tanh(α + b) − target is strictly increasing (c > −1) and |c·tanh| ≤ |c|, so
        the root lies in [target − |c|, target + |c|]; Newton steps leaving the bracket fall back
        to bisection, which guarantees convergence even where g' ≈ 0 (c near −1).
        """
        # Padded: where tanh saturates the root sits on the bracket's edge, and rounding of
        # target = wᵀy can put it a few ulps outside.
        pad = 1e-6 * (1.0 + target.abs() + c.abs())
        lo = target - c.abs() - pad
        hi = target + c.abs() + pad
        alpha = target - c * torch.tanh(target + b)  # one fixed-point step: exact when c·tanh' is small
        alpha = alpha.clamp(lo, hi)
        prev_step = hi - lo
        tol = 8 * torch.finfo(target.dtype).eps
        for _ in range(_MAX_ROOT_ITERS):
            t = torch.tanh(alpha + b)
            g = alpha + c * t - target
            lo = torch.where(g < 0, alpha, lo)
            hi = torch.where(g > 0, alpha, hi)
            gp = 1.0 + c * (1.0 - t * t)
            newton = alpha - g / gp
            # Newton on tanh-shaped g can oscillate between the flanks; as in Numerical Recipes'
            # rtsafe, take it only while it stays in the bracket and at least halves the step.
            ok = (newton >= lo) & (newton <= hi) & torch.isfinite(newton) & ((newton - alpha).abs() <= 0.5 * prev_step)
            new = torch.where(ok, newton, 0.5 * (lo + hi))
            prev_step = (new - alpha).abs()
            alpha = new
            scale = tol * (1.0 + alpha.abs())
            if bool(((prev_step <= scale) | ((hi - lo) <= scale)).all()):
                break
        return alpha

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inverse: solve for α = wᵀz in one scalar equation, then z = y − û·tanh(α + b).

        Projecting f(z) = y on w gives wᵀy = α + (wᵀû)·tanh(α + b) (Rezende & Mohamed, App. A.1).
        Computed in float64 internally: the scalar equation is ill-conditioned where wᵀû ≈ −1.
        """
        out_dtype = y.dtype
        y64 = y.to(torch.float64)
        u_hat, w, b, c = self._terms(torch.float64)
        target = y64 @ w
        alpha = self._solve_alpha(target, c, b)
        # One Newton step taken with autograd on: its value is the root again (g(α) ≈ 0), and its
        # gradient is the implicit-function one, ∂α/∂y = w / g'(α), so the inverse is differentiable.
        t = torch.tanh(alpha + b)
        alpha = alpha - (alpha + c * t - target) / (1.0 + c * (1.0 - t * t))
        h = torch.tanh(alpha + b)
        z = y64 - h[:, None] * u_hat[None, :]
        log_det = -torch.log1p((1.0 - h * h) * c)
        return z.to(out_dtype), log_det.to(out_dtype)


class FlowStack(Flow):
    """A composition f_T ∘ … ∘ f_1 (eq. 5); log-dets add up (eq. 3)."""

    def __init__(self, flows: list[Flow], dim: int | None = None) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)
        self.dim = dim

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for f in self.flows:
            z, ld = f(z)
            log_det = log_det + ld
        return z, log_det

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """The composed map without log-determinants (each flow's own fast path)."""
        for f in self.flows:
            z = f.transform(z) if hasattr(f, "transform") else f(z)[0]
        return z

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for f in reversed(self.flows):
            y, ld = f.inverse(y)
            log_det = log_det + ld
        return y, log_det


class PlanarFlowStack(FlowStack):
    """T planar flows z → z* (the paper's choice, section 2).

    ``fused`` (the default) runs the stack as one expression: the constraint û, w and b of all T
    flows are formed at once (``stacked_terms``), each flow is then two kernels (an ``addmv`` for
    wᵀz + b and an ``addr`` for z + û·h after the tanh), and the log-determinants of eq. (3) are one
    expression over the T×B matrix of tanh values. The eager path (``fused = False``) applies the
    ``PlanarFlow`` modules one by one, about eight kernels per flow and as many autograd nodes; both
    hold the same parameters (one state dict) and compute the same map.
    """

    def __init__(self, dim: int, n_flows: int, init_scale: float = 0.01, *, fused: bool = True) -> None:
        if n_flows < 0:
            raise ValueError(f"n_flows must be ≥ 0, got {n_flows}")
        super().__init__([PlanarFlow(dim, init_scale) for _ in range(n_flows)])
        self.dim = dim
        self.fused = fused

    def stacked_terms(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Û (T, d), W (T, d), b (T,), c (T,)), c_t = w_tᵀû_t = m(w_tᵀu_t): ``PlanarFlow._terms`` of all flows."""
        flows: list[PlanarFlow] = list(self.flows)  # type: ignore[arg-type]
        U = torch.stack([f.u for f in flows])
        W = torch.stack([f.w for f in flows])
        b = torch.stack([f.b for f in flows])
        wu = (W * U).sum(1)
        w_sq = (W * W).sum(1)
        m = _m(wu)
        U_hat = U + ((m - wu) / w_sq.clamp_min(1e-12))[:, None] * W
        c = torch.where(w_sq > 1e-12, m, (W * U_hat).sum(1))
        if dtype != U.dtype:
            U_hat, W, b, c = U_hat.to(dtype), W.to(dtype), b.to(dtype), c.to(dtype)
        return U_hat, W, b, c

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.fused or not len(self.flows):
            return super().forward(z)
        y, log_det = _PlanarStack.apply(z, *self.stacked_terms(z.dtype))
        return y, log_det

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        if not self.fused or not len(self.flows):
            return super().transform(z)
        # No log-det and usually no gradient (scoring, exports, q(s|z) in eq. 8): the plain loop keeps no
        # per-flow copies of z, which the autograd node saves for its backward pass.
        U, W, b, _ = self.stacked_terms(z.dtype)
        n = z.shape[0]
        for u_t, w_t, b_t in zip(U.unbind(0), W.unbind(0), b.unbind(0), strict=True):
            z = torch.addr(z, torch.tanh(torch.addmv(b_t.expand(n), z, w_t)), u_t)
        return z

    @torch.no_grad()
    def project_columns(self, z_cols: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
        """Rows ``dims`` of z* for many points stored as columns: (d, M) -> (len(dims), M).

        The fast path of Monte-Carlo scoring. Each planar flow moves z only along its û_t, so
        z* = z + Σ_t û_t h_t with h_t = tanh(w_tᵀ z_{t−1} + b_t), and
        w_tᵀ z_{t−1} = w_tᵀ z + Σ_{s<t} (w_tᵀ û_s) h_s. The T scalars h_t per point therefore follow
        from one (T×d)·(d×M) product and a T×T recursion, and only the rows of z* that the heads
        read are ever formed: about a fifth of the memory traffic of applying the flows one by one.

        tanh is evaluated as 2σ(2a) − 1, with the affine parts folded into the products: PyTorch's CPU
        sigmoid is 3.6× faster than its tanh (0.95 against 3.4 ns per float32 on AVX2), and tanh was
        the largest single cost of pool scoring. With p_t = σ(2a_t):
        2a_t = 2(w_tᵀz + b_t − Σ_{s<t} G_ts) + Σ_{s<t} 4G_ts p_s, and z* = z − Σ_t û_t + Σ_t 2û_t p_t.
        """
        flows = [f for f in self.flows if isinstance(f, PlanarFlow)]
        if len(flows) != len(self.flows):
            raise TypeError("project_columns needs a stack of planar flows only")
        if not flows:
            return z_cols.index_select(0, dims)
        U, W, b, _ = self.stacked_terms(z_cols.dtype)  # (T, d), (T, d), (T,)
        G = torch.tril(W @ U.T, -1)  # (T, T): G[t, s] = w_tᵀ û_s for s < t
        X = torch.mm(2 * W, z_cols).add_((2 * (b - G.sum(1)))[:, None])  # (T, M): 2a_t before the recursion
        G4 = 4 * G
        P = torch.empty_like(X)
        # Flows in blocks: what earlier blocks contribute to a block is one matrix product, which reads
        # those rows of P once, instead of once per flow; within a block, one addmv per flow. For 32
        # flows in blocks of 8 that reads a third of the rows of the flow-by-flow recursion.
        for t0 in range(0, len(flows), RECURSION_BLOCK):
            t1 = min(len(flows), t0 + RECURSION_BLOCK)
            if t0:
                X[t0:t1].addmm_(G4[t0:t1, :t0], P[:t0])
            for t in range(t0, t1):
                x = X[t] if t == t0 else torch.addmv(X[t], P[t0:t].T, G4[t, t0:t])
                torch.sigmoid(x, out=P[t])
        U_d = U.index_select(1, dims)  # (T, k)
        return torch.addmm(z_cols.index_select(0, dims) - U_d.sum(0)[:, None], 2 * U_d.T, P)


class _PlanarStack(torch.autograd.Function):
    """T planar flows as one autograd node, with the backward pass written out.

    Forward: a_t = w_tᵀz_{t−1} + b_t, h_t = tanh(a_t), z_t = z_{t−1} + û_t h_t (eq. 4), and
    log-det Σ_t log(1 + (1 − h_t²) c_t) with c_t = w_tᵀû_t (eq. 3). Backward, from the last flow to
    the first, with g the gradient at z_t and ℓ the one at the log-det:
    ∂/∂h_t = gᵀû_t − ℓ·2h_t c_t / (1 + (1 − h_t²) c_t), ∂/∂a_t = (1 − h_t²)·∂/∂h_t, and the gradient
    at z_{t−1} is g + w_t ∂/∂a_t. Each flow costs three small kernels either way; the parameters'
    gradients are four batched products at the end. Autograd would record about ten nodes per flow.
    """

    @staticmethod
    def forward(ctx, z, U, W, b, c):  # type: ignore[no-untyped-def, override]
        T, (n, d) = U.shape[0], z.shape
        Zs = torch.empty(T + 1, n, d, dtype=z.dtype, device=z.device)  # z_0 … z_T
        H = torch.empty(T, n, dtype=z.dtype, device=z.device)
        Zs[0] = z
        # Rows bound once: indexing inside the loop would cost a tensor view per use.
        zs, hs, us, ws, bs = Zs.unbind(0), H.unbind(0), U.unbind(0), W.unbind(0), b.unbind(0)
        for t in range(T):
            torch.tanh(torch.addmv(bs[t].expand(n), zs[t], ws[t]), out=hs[t])
            torch.addr(zs[t], hs[t], us[t], out=zs[t + 1])
        D = 1.0 - H * H  # tanh' at each flow
        den = torch.addcmul(torch.ones_like(D), D, c[:, None])  # 1 + (1 − h²)c > 0
        ctx.save_for_backward(Zs, H, D, den, U, W, c)
        return Zs[T].clone(), torch.log(den).sum(0)

    @staticmethod
    def backward(ctx, gy, gl):  # type: ignore[no-untyped-def, override]
        Zs, H, D, den, U, W, c = ctx.saved_tensors
        T, n = H.shape
        # G[t] is the gradient at z_t, filled from the last flow back: G[T] = gy, G[t−1] = G[t] + w_t·∂/∂a_t.
        G = torch.empty_like(Zs)
        if gy is None:
            G[T].zero_()
        else:
            G[T] = gy
        gl = gl if gl is not None else torch.zeros(n, dtype=Zs.dtype, device=Zs.device)
        gc = (gl[None, :] * D / den).sum(1)
        gh_log_det = -2.0 * gl[None, :] * H * c[:, None] / den  # (T, n)
        GA = torch.empty_like(H)  # ∂/∂a_t
        gs, gas, gls, Ds, us, ws = (
            G.unbind(0),
            GA.unbind(0),
            gh_log_det.unbind(0),
            D.unbind(0),
            U.unbind(0),
            W.unbind(0),
        )
        for t in range(T - 1, -1, -1):
            torch.mul(torch.addmv(gls[t], gs[t + 1], us[t]), Ds[t], out=gas[t])
            torch.addr(gs[t + 1], gas[t], ws[t], out=gs[t])
        gU = torch.bmm(H[:, None, :], G[1:]).squeeze(1)  # Σ_items h_t ∂/∂z_t
        gW = torch.bmm(GA[:, None, :], Zs[:T]).squeeze(1)  # Σ_items ∂/∂a_t z_{t−1}
        return G[0].clone(), gU, gW, GA.sum(1), gc


class _CouplingFlow(Flow):
    """y_a = x_a, y_b = g(x_b; θ(x_a)): one half conditions an elementwise bijection of the other.

    The Jacobian is block-triangular, so its log-det is the sum of g's elementwise log-slopes, and
    the inverse only needs g's inverse because x_a = y_a is known (Dinh et al., 2017, section 3).
    For dim ≥ 2 the halves are z[:, :dim//2] and the rest, and ``mask_parity`` says which half is
    transformed, so alternating parities let every coordinate move. For dim = 1 there is nothing to
    condition on and the single coordinate gets a learnt, input-independent θ: an elementwise
    bijection of z, still trainable.

    The conditioner's last layer starts at zero, where both subclasses' g is exactly the identity:
    a fresh lens has z* = z, as with the planar flows' small init.
    """

    def __init__(self, dim: int, hidden: int, mask_parity: int, n_params: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be ≥ 1, got {dim}")
        if hidden < 1:
            raise ValueError(f"hidden must be ≥ 1, got {hidden}")
        if mask_parity not in (0, 1):
            raise ValueError(f"mask_parity must be 0 or 1, got {mask_parity}")
        self.dim = dim
        self.mask_parity = mask_parity
        self.n_params = n_params
        half = dim // 2
        if dim == 1:
            self._cond, self._trans = slice(0, 0), slice(0, 1)
        elif mask_parity == 0:
            self._cond, self._trans = slice(0, half), slice(half, dim)
        else:
            self._cond, self._trans = slice(half, dim), slice(0, half)
        n_cond = len(range(dim)[self._cond])
        self.n_trans = dim - n_cond
        n_out = self.n_trans * n_params
        if n_cond == 0:
            self.net: nn.Module | None = None
            self.const = nn.Parameter(torch.zeros(n_out))
        else:
            # SiLU rather than ReLU keeps the map C¹, like the planar flows' tanh.
            self.net = nn.Sequential(
                nn.Linear(n_cond, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, n_out),
            )
            last = self.net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def _theta(self, x: torch.Tensor) -> torch.Tensor:
        """The transform's parameters for every row: (B, d) -> (B, n_trans, n_params), in x's dtype."""
        if self.net is None:
            theta = self.const.to(x.dtype).expand(x.shape[0], -1)
        else:
            # The conditioner runs in its own dtype, so float64 points through float32 weights
            # (or the reverse) work as they do for the planar flows.
            w_dtype = self.net[0].weight.dtype
            theta = self.net(x[:, self._cond].to(w_dtype)).to(x.dtype)
        return theta.reshape(x.shape[0], self.n_trans, self.n_params)

    def _g(self, xb: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise g and its log-slope: (B, n), (B, n, p) -> (B, n), (B, n)."""
        raise NotImplementedError

    def _g_inv(self, yb: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g⁻¹ and its (negative) log-slope: (B, n), (B, n, p) -> (B, n), (B, n)."""
        raise NotImplementedError

    def _join(self, kept: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        parts = (moved,) if self.dim == 1 else (kept, moved) if self.mask_parity == 0 else (moved, kept)
        return torch.cat(parts, dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yb, log_slope = self._g(z[:, self._trans], self._theta(z))
        return self._join(z[:, self._cond], yb), log_slope.sum(1)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) without the log-determinant. (B, d) -> (B, d)"""
        return self(z)[0]

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # y's conditioning half is z's, so θ is the forward pass's θ exactly.
        zb, log_slope = self._g_inv(y[:, self._trans], self._theta(y))
        return self._join(y[:, self._cond], zb), log_slope.sum(1)


class AffineCouplingFlow(_CouplingFlow):
    """RealNVP affine coupling, y_b = x_b·exp(s(x_a)) + t(x_a) (Dinh et al., 2017, eq. 4–6).

    The log-scale is soft-clamped, s = S·tanh(ŝ/S) with S = ``max_log_scale``: an unbounded ŝ can
    make exp(s) overflow early in training, and the clamp is the identity near 0, so it leaves
    small scales unchanged. Each layer thus scales by at most e^±S.
    """

    def __init__(self, dim: int, hidden: int = 64, mask_parity: int = 0, *, max_log_scale: float = 2.0) -> None:
        if not max_log_scale > 0:
            raise ValueError(f"max_log_scale must be > 0, got {max_log_scale}")
        super().__init__(dim, hidden, mask_parity, n_params=2)
        self.max_log_scale = max_log_scale

    def _scale_shift(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.max_log_scale * torch.tanh(theta[..., 0] / self.max_log_scale)
        return s, theta[..., 1]

    def _g(self, xb: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(theta)
        return xb * torch.exp(s) + t, s

    def _g_inv(self, yb: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._scale_shift(theta)
        return (yb - t) * torch.exp(-s), -s


class SplineCouplingFlow(_CouplingFlow):
    """Neural-spline coupling: g is a monotone rational-quadratic spline (Durkan et al., 2019).

    The spline is zuko's ``MonotonicRQSTransform`` with K = ``bins`` bins on [−B, B], B = ``bound``:
    the conditioner gives K widths, K heights and K − 1 inner knot derivatives per coordinate, and
    zuko fixes the end derivatives at 1 and is the identity outside [−B, B], so g is C¹ everywhere
    and the tails of z pass unchanged. The lens works on standardised z, where B = 5 covers all
    but ~1e-6 of the mass. With all parameters zero the bins are equal and every derivative is 1,
    which is exactly the identity. zuko bounds the slopes to [``min_slope``, 1/``min_slope``] and
    inverts the spline analytically (a quadratic per point), so the inverse is exact.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        bins: int = 8,
        bound: float = 5.0,
        mask_parity: int = 0,
        *,
        min_slope: float = 1e-3,
    ) -> None:
        if bins < 1:
            raise ValueError(f"bins must be ≥ 1, got {bins}")
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        if not 0 < min_slope < 1:
            raise ValueError(f"min_slope must be in (0, 1), got {min_slope}")
        super().__init__(dim, hidden, mask_parity, n_params=3 * bins - 1)
        self.bins = bins
        self.bound = bound
        self.min_slope = min_slope

    def _spline(self, theta: torch.Tensor) -> MonotonicRQSTransform:
        k = self.bins
        return MonotonicRQSTransform(
            theta[..., :k], theta[..., k : 2 * k], theta[..., 2 * k :], bound=self.bound, slope=self.min_slope
        )

    def _g(self, xb: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._spline(theta).call_and_ladj(xb)

    def _g_inv(self, yb: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In float64, as the planar inverse: zuko solves a quadratic per point, whose discriminant
        # can round below zero (NaN) in float32 on a steep bin next to a flat one.
        spline = self._spline(theta.to(torch.float64))
        xb = spline.inv(yb.to(torch.float64))
        # zuko has no inverse log-slope of its own; the forward one at the recovered point is it,
        # by the inverse function theorem.
        return xb.to(yb.dtype), -spline.call_and_ladj(xb)[1].to(yb.dtype)


FLOW_FAMILIES = ("planar", "coupling", "spline")


def build_flow_stack(family: str, dim: int, n_flows: int, *, hidden: int = 64) -> FlowStack:
    """A stack of ``n_flows`` flows of one family on R^dim (``FLOW_FAMILIES``).

    ``"planar"`` is ``PlanarFlowStack(dim, n_flows)``, the paper's lens; ``"coupling"`` (RealNVP)
    and ``"spline"`` (neural spline) alternate the mask parity so that consecutive layers transform
    opposite halves. ``hidden`` is the coupling conditioners' width (unused by planar flows).
    n_flows = 0 is the identity for every family.
    """
    if family not in FLOW_FAMILIES:
        raise ValueError(f"unknown flow family {family!r}; choose one of {', '.join(FLOW_FAMILIES)}")
    if n_flows < 0:
        raise ValueError(f"n_flows must be ≥ 0, got {n_flows}")
    if family == "planar":
        return PlanarFlowStack(dim, n_flows)
    if family == "coupling":
        flows: list[Flow] = [AffineCouplingFlow(dim, hidden, mask_parity=t % 2) for t in range(n_flows)]
    else:
        flows = [SplineCouplingFlow(dim, hidden, mask_parity=t % 2) for t in range(n_flows)]
    return FlowStack(flows, dim)


def log_normal_std(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) summed over the last dimension (the prior p(z*) of eq. 7)."""
    return -0.5 * (x * x).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)
