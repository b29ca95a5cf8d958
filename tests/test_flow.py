"""Tests for the flow-matching policy and its exact log-density (swfp.flow).

Run with ``OMP_NUM_THREADS=1``: the trained 8-mode ring (shared by several tests) takes ~10 s.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from swfp.flow import FlowConfig, FlowPolicy, InversionError

RING_RADIUS, RING_STD, RING_MODES = 0.6, 0.05, 8
RING_CENTRES = RING_RADIUS * torch.stack(
    [torch.cos(2 * math.pi * torch.arange(RING_MODES) / RING_MODES),
     torch.sin(2 * math.pi * torch.arange(RING_MODES) / RING_MODES)], dim=-1)


def ring_samples(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    mode = torch.randint(0, RING_MODES, (n,), generator=generator)
    return RING_CENTRES[mode] + RING_STD * torch.randn(n, 2, generator=generator)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.pow(2).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def random_flow(act_dim: int, gain: float = 1.0, num_steps: int = 5, obs_dim: int = 2, seed: int = 0) -> FlowPolicy:
    """A small randomly initialised flow; ``gain`` scales every weight (Lipschitz constant ~ gain³)."""
    torch.manual_seed(seed)
    flow = FlowPolicy(obs_dim, act_dim, FlowConfig(hidden_dims=(32, 32), time_embed_dim=8, num_steps=num_steps))
    with torch.no_grad():
        for layer in flow.velocity.net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(gain)
    return flow


def grid(lim: float, n: int, dim: int) -> tuple[torch.Tensor, float]:
    """A regular grid on ``[-lim, lim]^dim`` and its cell volume."""
    xs = torch.linspace(-lim, lim, n)
    points = torch.stack(torch.meshgrid(*[xs] * dim, indexing="ij"), dim=-1).reshape(-1, dim)
    return points, (xs[1] - xs[0]).item() ** dim


def max_step_expansion(flow: FlowPolicy, obs: torch.Tensor, x: torch.Tensor) -> float:
    """``max_k ‖h·∂_x v(s, x, t_k)‖₂`` over ``x``: below 1 means every step is a contraction-invertible bijection."""
    with torch.no_grad():
        return max(torch.linalg.matrix_norm(flow.step_size * flow._velocity_and_jacobian(obs, x, k)[1], ord=2).max().item()
                   for k in range(flow.num_steps))


@pytest.fixture(scope="module")
def ring():
    """A flow and a diagonal Gaussian, both fitted to the 8-mode ring: same data, steps and optimiser."""
    torch.manual_seed(0)
    flow = FlowPolicy(1, 2, FlowConfig(hidden_dims=(128, 128, 128), time_embed_dim=16, num_steps=20))
    mean = torch.zeros(2, requires_grad=True)
    log_std = torch.zeros(2, requires_grad=True)
    steps, obs = 3000, torch.zeros(256, 1)
    opt = torch.optim.Adam([*flow.parameters(), mean, log_std], lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        actions = ring_samples(256)
        nll = (0.5 * ((actions - mean) / log_std.exp()).pow(2) + log_std).sum(-1).mean()  # Gaussian max likelihood
        loss = flow.flow_matching_loss(obs, actions) + nll  # the two parameter sets do not interact
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return SimpleNamespace(flow=flow.requires_grad_(False), mean=mean.detach(), std=log_std.exp().detach())


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased squared maximum mean discrepancy with an RBF kernel (Gretton et al., 2012)."""
    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth ** 2))
    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
            - 2 * k(x, y).mean()).item()


def mode_coverage(x: torch.Tensor) -> tuple[float, float]:
    """Fraction of samples within 3σ of some mode, and the smallest fraction that any single mode gets."""
    dist, nearest = torch.cdist(x, RING_CENTRES).min(dim=1)
    inside = dist < 3 * RING_STD
    return inside.float().mean().item(), torch.bincount(nearest[inside], minlength=RING_MODES).min().item() / len(x)


# --- 1. multimodal target -------------------------------------------------------------------------

def test_flow_fits_multimodal_ring_a_gaussian_cannot(ring):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    true, true_again = ring_samples(2000, gen), ring_samples(2000, gen)
    with torch.no_grad():
        flow_samples, _ = ring.flow.sample(torch.zeros(2000, 1))
    gauss_samples = ring.mean + ring.std * torch.randn(2000, 2, generator=gen)

    # RBF bandwidth = the mode std, so the distance sees each mode's shape. Measured (2000 vs 2000):
    # true vs true |MMD²| ≤ 3e-4 (estimator noise); the max-likelihood Gaussian (σ ≈ 0.43, the best
    # unimodal fit) 0.036–0.039; the flow 0.004–0.009 over training seeds 0–2. 0.02 sits between,
    # ~2× from either side, and 60× above the noise floor.
    assert abs(mmd2(true, true_again, RING_STD)) < 0.002
    flow_mmd, gauss_mmd = mmd2(flow_samples, true, RING_STD), mmd2(gauss_samples, true, RING_STD)
    assert flow_mmd < 0.02, f"flow MMD² {flow_mmd:.4f}"
    assert gauss_mmd > 0.02, f"Gaussian MMD² {gauss_mmd:.4f}"

    # Mode coverage. Measured: true samples 0.99 within 3σ, ≥ 11% per mode (12.5% expected); flow
    # 0.77–0.82 and ≥ 8% per mode (its misses are thin bridges between modes, which K = 20 Euler
    # steps of a small net leave); Gaussian 0.18–0.20, ≤ 2% per mode.
    flow_inside, flow_min_mode = mode_coverage(flow_samples)
    gauss_inside, gauss_min_mode = mode_coverage(gauss_samples)
    assert flow_inside > 0.6 and flow_min_mode > 0.05, (flow_inside, flow_min_mode)
    assert gauss_inside < 0.4 and gauss_min_mode < 0.05, (gauss_inside, gauss_min_mode)


# --- 2. the density integrates to 1 ---------------------------------------------------------------

@pytest.mark.parametrize("act_dim, gain, n", [(1, 3.0, 2801), (2, 2.0, 141)])
def test_random_flow_density_integrates_to_one(act_dim, gain, n):
    flow = random_flow(act_dim, gain=gain, num_steps=5)
    points, cell = grid(7.0, n, act_dim)
    obs = torch.randn(1, 2).expand(len(points), -1)
    with torch.no_grad():
        density = flow.log_prob(obs, points).exp()
        samples, _ = flow.sample(obs[:4000])
    # Preconditions, so the test means something: every step is invertible (h·‖∂v/∂x‖ < 1 on the
    # grid), the grid holds the mass, and the flow is far from its N(0, I) base (measured TV 0.28 / 0.20).
    assert max_step_expansion(flow, obs, points) < 1
    assert (samples.abs() > 7.0).any(-1).float().mean() < 1e-3
    gaussian = standard_normal_log_prob(points).exp()
    assert 0.5 * (density - gaussian).abs().sum().item() * cell > 0.1
    # Spacing 0.005 (1-D) / 0.1 (2-D) against densities whose scale is ~1: the Riemann sum of a
    # smooth density is accurate far below 1e-4 (measured |error| ≤ 3e-5), and the inversion
    # tolerance 1e-5 moves log-densities by ~1e-5. A missing or wrong log-det term is off by ≥ 0.1.
    assert density.sum().item() * cell == pytest.approx(1.0, abs=1e-3)


def test_trained_ring_density_integrates_to_one(ring):
    points, cell = grid(1.0, 81, 2)  # spacing 0.025 = σ/2 of a mode
    with torch.no_grad():
        density = ring.flow.log_prob(torch.zeros(len(points), 1), points).exp()
        samples, _ = ring.flow.sample(torch.zeros(4000, 1))
    assert (samples.abs() > 1.0).any(-1).float().mean() < 2e-3  # the box [-1, 1]² holds the mass
    # Measured 1.0005 (1.0003 at spacing 0.02). Tolerance 0.01: Riemann error at σ/2 spacing ~1e-3,
    # log-density error from the inversion tolerance 1e-5 ~1e-3 (see the consistency test), and
    # ≤ 2e-3 of mass outside the box. Dropping the log-dets gives an integral far from 1.
    assert density.sum().item() * cell == pytest.approx(1.0, abs=0.01)


# --- 3. sampling and inversion agree --------------------------------------------------------------

def test_sample_log_prob_matches_log_prob_and_inverse_recovers_noise():
    flow = random_flow(3, gain=2.0, num_steps=5)
    obs, noise = torch.randn(256, 2), torch.randn(256, 3)
    with torch.no_grad():
        actions, sample_log_prob = flow.sample(obs, noise=noise, with_log_prob=True)
        torch.testing.assert_close(flow.log_prob(obs, actions), sample_log_prob, atol=1e-4, rtol=0)
        torch.testing.assert_close(flow.invert(obs, actions), noise, atol=1e-4, rtol=0)
    assert (actions - noise).abs().max() > 0.1  # the chain really moved the noise


def test_trained_ring_sample_log_prob_matches_log_prob(ring):
    torch.manual_seed(2)
    noise = torch.randn(500, 2)
    # float64: the identity holds to the solver tolerance (measured 1e-8 at tol 1e-10).
    flow64 = copy.deepcopy(ring.flow).double()
    obs64 = torch.zeros(500, 1, dtype=torch.float64)
    with torch.no_grad():
        actions, sample_log_prob = flow64.sample(obs64, noise=noise.double(), with_log_prob=True)
        torch.testing.assert_close(flow64.log_prob(obs64, actions, tol=1e-10), sample_log_prob, atol=1e-6, rtol=0)
        torch.testing.assert_close(flow64.invert(obs64, actions, tol=1e-10), noise.double(), atol=1e-7, rtol=0)
        # float32: a residual tol in a is amplified ~40× back to x0 by the strongly contracting late
        # steps (1 + h·λ down to 0.4), then ×|x0| by log N(x0): measured error 1.3e-4 at tol 1e-6.
        obs = torch.zeros(500, 1)
        actions, sample_log_prob = ring.flow.sample(obs, noise=noise, with_log_prob=True)
        torch.testing.assert_close(ring.flow.log_prob(obs, actions, tol=1e-6), sample_log_prob, atol=1e-3, rtol=0)


def test_euler_step_log_det_matches_autograd_jacobian():
    flow = random_flow(3, gain=2.0, num_steps=4)
    obs, x = torch.randn(4, 2), torch.randn(4, 3)
    for k in range(flow.num_steps):
        x_next, log_det = flow.euler_step_log_det(obs, x, k)
        torch.testing.assert_close(x_next, flow.euler_step(obs, x, k))
        for i in range(len(x)):
            jac = torch.autograd.functional.jacobian(lambda xi: flow.euler_step(obs[i:i + 1], xi[None], k)[0], x[i])
            torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-5, rtol=0)


def test_log_prob_gradients_match_finite_differences():
    """``log_prob`` is differentiable through the inversion (implicit-function theorem)."""
    flow = random_flow(2, gain=2.0, num_steps=3).double()
    obs, actions = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, s: flow.log_prob(s, a, tol=1e-12), (actions.requires_grad_(), obs.requires_grad_()))
    weight = flow.velocity.net[2].weight
    (grad,) = torch.autograd.grad(flow.log_prob(obs, actions, tol=1e-12).sum(), weight)
    for idx in [(0, 0), (3, 7), (10, 31)]:
        with torch.no_grad():
            weight[idx] += 1e-6
            up = flow.log_prob(obs, actions, tol=1e-12).sum()
            weight[idx] -= 2e-6
            down = flow.log_prob(obs, actions, tol=1e-12).sum()
            weight[idx] += 1e-6
        assert grad[idx].item() == pytest.approx(((up - down) / 2e-6).item(), rel=1e-4, abs=1e-6)


# --- 4. known densities ---------------------------------------------------------------------------

def test_zero_velocity_is_standard_normal():
    flow = random_flow(3)
    with torch.no_grad():
        flow.velocity.net[-1].weight.zero_()
        flow.velocity.net[-1].bias.zero_()
        obs, actions = torch.randn(64, 2), 2 * torch.randn(64, 3)
        torch.testing.assert_close(flow.log_prob(obs, actions), standard_normal_log_prob(actions), atol=1e-6, rtol=0)
        samples, sample_log_prob = flow.sample(obs, noise=actions, with_log_prob=True)
    torch.testing.assert_close(samples, actions)
    torch.testing.assert_close(flow.sample(obs, noise=actions)[0], actions)  # no clipping to [-1, 1]
    torch.testing.assert_close(sample_log_prob, standard_normal_log_prob(actions), atol=1e-6, rtol=0)


class LinearVelocity(nn.Module):
    """``v(s, x, t) = A x + b0 + t·b1 + C s``: the Euler chain is affine, so the policy is Gaussian."""

    def __init__(self, A, b0, b1, C):
        super().__init__()
        self.A, self.b0, self.b1, self.C = A, b0, b1, C

    def forward(self, obs, x, t):
        return x @ self.A.T + self.b0 + t[:, None] * self.b1 + obs @ self.C.T


@pytest.mark.parametrize("A, K", [
    ([[-0.8, 0.6, 0.0], [-0.3, 0.5, 0.2], [0.4, 0.0, -1.5]], 4),  # non-symmetric, mixed signs, h·‖A‖ < 1
    # Expanding steps, h·A eigenvalues 1.25–1.75 > 1: the fixed-point iteration diverges, Newton inverts.
    ([[3.0, 0.5, 0.0], [0.0, 2.5, 0.0], [0.5, 0.0, 3.5]], 2),
])
def test_linear_velocity_matches_closed_form_gaussian(A, K):
    torch.manual_seed(3)
    D = 3
    flow = random_flow(D, num_steps=K)
    A = torch.tensor(A)
    b0, b1, C = torch.randn(D), torch.randn(D), torch.randn(D, 2)
    flow.velocity = LinearVelocity(A, b0, b1, C)
    s = torch.randn(2)
    # x_{k+1} = M x_k + h (b0 + t_k b1 + C s), M = I + hA  =>  a = M^K x0 + c ~ N(c, M^K (M^K)ᵀ).
    h = 1.0 / K
    M = torch.eye(D) + h * A
    c = torch.zeros(D)
    for k in range(K):
        c = M @ c + h * (b0 + k * h * b1 + C @ s)
    MK = torch.linalg.matrix_power(M, K)
    policy = torch.distributions.MultivariateNormal(c, covariance_matrix=MK @ MK.T)
    obs = s.expand(128, -1)
    actions = policy.sample((128,))
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(obs, actions, tol=1e-6), policy.log_prob(actions), atol=1e-4, rtol=0)
        samples, sample_log_prob = flow.sample(obs, with_log_prob=True)
        deterministic, _ = flow.sample(obs, deterministic=True)
    torch.testing.assert_close(sample_log_prob, policy.log_prob(samples), atol=1e-4, rtol=0)
    torch.testing.assert_close(deterministic, c.expand(128, -1), atol=1e-5, rtol=0)


# --- 5. non-convergence is detected ---------------------------------------------------------------

def test_huge_lipschitz_velocity_raises_inversion_error():
    flow = random_flow(2, gain=10.0, num_steps=2)  # h·Lip(v) ~ 500: the steps fold space
    obs, actions = torch.randn(64, 2), torch.randn(64, 2)
    with torch.no_grad():
        with pytest.raises(InversionError, match=r"\d+ of 64 samples did not converge") as err:
            flow.invert(obs, actions)
        message = str(err.value)
        assert "max residual" in message and "more Euler steps K" in message and "support" in message
        with pytest.raises(InversionError):
            flow.log_prob(obs, actions)
        # The same actions invert fine through a well-behaved flow: the error is about the field.
        random_flow(2, gain=1.0, num_steps=2).invert(obs, actions)


# --- 6. determinism and gradients -----------------------------------------------------------------

def test_deterministic_sampling_repeats():
    flow = random_flow(3, gain=2.0)
    obs = torch.randn(16, 2)
    first, log_prob = flow.sample(obs, deterministic=True)
    torch.testing.assert_close(flow.sample(obs, deterministic=True)[0], first, atol=0, rtol=0)
    assert log_prob is None
    assert not torch.allclose(flow.sample(obs)[0], first)
    assert first.std(0).min() > 1e-3  # it depends on the observation
    with pytest.raises(ValueError):
        flow.sample(obs, noise=torch.zeros(16, 3), deterministic=True)


def test_gradients_flow_through_the_chain():
    flow = random_flow(3, gain=2.0)
    obs = torch.randn(32, 2)
    actions, _ = flow.sample(obs)
    actions.pow(2).sum().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    flow.zero_grad()
    _, log_prob = flow.sample(obs, with_log_prob=True)
    log_prob.mean().backward()  # an entropy term through the Jacobians (second-order autograd)
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --- config -------------------------------------------------------------------------------------

def test_config_round_trips_through_json_and_validates():
    config = FlowConfig(hidden_dims=[64, 64], time_embed_dim=8, num_steps=4)
    assert config.hidden_dims == (64, 64)
    assert FlowConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    for bad in ({"num_steps": 0}, {"hidden_dims": (64, 0)}, {"hidden_dims": ()}, {"time_embed_dim": 7}):
        with pytest.raises(ValueError):
            FlowConfig(**bad)
