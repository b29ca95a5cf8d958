"""SWFP's policy-improvement step: one JKO step of the entropic RL functional, as a small flow block.

DESIGN.md §1–2. For a state ``s`` the functional is ``F_s(π) = E_π[−Q(s, a)] + α·E_π[log π(a|s)]``
(``= α·KL(π ‖ exp(Q/α)/Z) + const``, minimised by the Boltzmann policy). One JKO step from the
current policy ``π_n`` is ``π_{n+1} = argmin_π F(π) + W₂²(π, π_n)/(2τ)``. Writing ``π = T#π_n``
with a learned map ``T = id + τ·u_φ`` replaces the W₂ term by the transport cost
``E‖T(a) − a‖²/(2τ)`` (an upper bound, tight for the optimal map), and the change of variables
``log π_{n+1}(T(a)) = log π_n(a) − log|det ∂_a T(a)|`` turns the entropy term into a log-det, so

    L(φ) = E_{s, a~π_n}[ −Q(s, T(a)) − α·log|det ∂_a T(a)| + ‖T(a) − a‖²/(2τ) ]       (1)

needs samples of ``π_n`` but never its density. The samples come from one no-grad forward pass
through the current cascade into a pool, so a gradient step costs the same whatever the chain's
length (the "cheaper sub-model training" claim; ``tests/test_jko.py`` measures it).

A block is a small velocity field ``u_φ(s, x, t)`` (the flow's :class:`~swfp.flow.VelocityField`,
narrower) integrated with M Euler sub-steps ``x ← x + (τ/M)·u_φ(s, x, m/M)``; its last layer starts
at zero, so a new block is the identity and ``π_{n+1} = π_n`` before training.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from swfp.flow import FlowConfig, InversionError, VelocityField, field_and_jacobian, invert_step

OBJECTIVES = ("jko", "langevin_fm")
# q_fn(obs (B, obs_dim), actions (B, D)) -> (B,), differentiable in the actions; the caller decides how
# a critic ensemble is reduced (min, mean, ...).
QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BlockConfig:
    hidden_dims: tuple[int, ...] = (64, 64)  # much smaller than the base flow's field
    time_embed_dim: int = 16
    sub_steps: int = 1       # M internal Euler sub-steps of size τ/M
    tau: float = 0.1         # JKO step size τ
    alpha: float = 0.01      # entropic temperature α
    lr: float = 3e-4
    grad_steps: int = 500    # J gradient steps per block
    batch_size: int = 256
    pool_size: int = 8192    # (s, a ~ π_n) pairs drawn once per block
    objective: str = "jko"   # "jko" (equation 1) or the Jacobian-free ablation "langevin_fm"
    box_weight: float = 0.0  # λ of the box term (λ/2)·‖T(a) − clip(T(a))‖² added to equation (1)

    def __post_init__(self):
        self.hidden_dims = tuple(int(w) for w in self.hidden_dims)  # a JSON list comes back as a tuple
        if self.sub_steps < 1:
            raise ValueError(f"sub_steps must be >= 1, got {self.sub_steps}")
        self.flow_config()  # validates hidden_dims and time_embed_dim
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "langevin_fm" and self.sub_steps < 2:
            raise ValueError("objective='langevin_fm' needs sub_steps >= 2: a one-step block fitted by flow "
                             "matching learns the mean displacement E[a' - a | a] = tau·grad Q and averages the "
                             "Langevin noise away (no entropy); two or more sub-steps can transport the spread")
        if not (math.isfinite(self.tau) and self.tau > 0 and math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"need tau > 0 and alpha >= 0, finite; got tau={self.tau}, alpha={self.alpha}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.box_weight) and self.box_weight >= 0):
            raise ValueError(f"box_weight must be >= 0, got {self.box_weight}")
        for name in ("grad_steps", "batch_size", "pool_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def flow_config(self) -> FlowConfig:
        """The block's field is a flow velocity field of this size; its "steps" are the M sub-steps."""
        return FlowConfig(hidden_dims=self.hidden_dims, time_embed_dim=self.time_embed_dim, num_steps=self.sub_steps)


class JKOBlock(nn.Module):
    """``T_φ(s, a)``: M Euler sub-steps ``x ← x + (τ/M)·u_φ(s, x, t_m)``, ``t_m = m/M``, from ``x = a``.

    With M = 1 this is the JKO map ``T(s, a) = a + τ·u_φ(s, a)``. Every sub-step is a bijection
    while ``(τ/M)·Lip(u_φ) < 1``, and is inverted like a flow's Euler step
    (:func:`swfp.flow.invert_step`). ``τ`` is a buffer, so a saved block reproduces its map exactly;
    M is structural and lives in ``config``.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: BlockConfig):
        super().__init__()
        self.obs_dim, self.act_dim, self.config = obs_dim, act_dim, config
        self.sub_steps = config.sub_steps
        self.field = VelocityField(obs_dim, act_dim, config.flow_config())
        nn.init.zeros_(self.field.net[-1].weight)  # u_φ ≡ 0: a new block is the identity
        nn.init.zeros_(self.field.net[-1].bias)
        self.register_buffer("tau", torch.tensor(float(config.tau)))

    @property
    def step_size(self) -> float:
        """``h = τ/M``."""
        return self.tau.item() / self.sub_steps

    def _time(self, x: torch.Tensor, m: int) -> torch.Tensor:
        return torch.full(x.shape[:1], m / self.sub_steps, dtype=x.dtype, device=x.device)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``T(s, a)`` ``(B, D)``."""
        h, x = self.step_size, actions
        for m in range(self.sub_steps):
            x = x + h * self.field(obs, x, self._time(x, m))
        return x

    def forward_log_det(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``T(s, a)`` and ``log|det ∂_a T(s, a)| = Σ_m log|det(I + h·∂_x u_φ(s, x_m, t_m))|`` ``(B,)``.

        Differentiable in ``φ`` (second-order autograd through the Jacobians), as equation (1) needs.
        """
        h, x = self.step_size, actions
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        log_det = x.new_zeros(x.shape[0])
        for m in range(self.sub_steps):
            u, jac = field_and_jacobian(self.field, obs, x, self._time(x, m))
            log_det = log_det + torch.linalg.slogdet(eye + h * jac).logabsdet
            x = x + h * u
        return x, log_det

    def inverse(self, obs: torch.Tensor, moved: torch.Tensor, max_iters: int = 200, tol: float = 1e-5) -> torch.Tensor:
        """``T⁻¹(s, y)``: the sub-steps undone in reverse; raises :class:`~swfp.flow.InversionError` if one fails."""
        x = moved
        for m in reversed(range(self.sub_steps)):
            x = invert_step(self.field, obs, x, self.step_size, self._time(x, m), max_iters, tol)
        return x


def jko_terms(block: JKOBlock, obs: torch.Tensor, actions: torch.Tensor,
              q_fn: QFunction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample pieces of equation (1): ``T(a)``, ``Q(s, T(a))``, ``log|det ∂_a T(a)|``, ``‖T(a) − a‖²``."""
    moved, log_det = block.forward_log_det(obs, actions)
    return moved, q_fn(obs, moved), log_det, (moved - actions).pow(2).sum(-1)


def jko_objective(moved: torch.Tensor, q: torch.Tensor, log_det: torch.Tensor, sq_dist: torch.Tensor,
                  tau: float | torch.Tensor, alpha: float | torch.Tensor, box_weight: float = 0.0) -> torch.Tensor:
    """Per-sample equation (1) plus the box term: ``−Q − α·log|det| + ‖T(a) − a‖²/(2τ) + (λ/2)·‖T(a) − clip(T(a))‖²``.

    The critic sees ``Q(s, clip(a))`` (:class:`~swfp.critic.QEnsemble`), so its action-gradient is zero in
    every component outside ``[-1, 1]`` and equation (1) alone can never pull such a component back
    (DESIGN.md §3, cause 5: ~11% of a BC flow's components). The box term pulls them back with
    force ``λ·(T(a) − clip(T(a)))``; it acts on the map ``T`` only, so the policy's density stays exact.
    """
    objective = -q - alpha * log_det + sq_dist / (2 * tau)
    if box_weight:
        objective = objective + 0.5 * box_weight * (moved - moved.clamp(-1.0, 1.0)).pow(2).sum(-1)
    return objective


def jko_loss(block: JKOBlock, obs: torch.Tensor, actions: torch.Tensor, q_fn: QFunction, alpha: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Minibatch estimate of equation (1) with the block's box term, ``actions ~ π_n`` carrying no graph
    (``generator``: unused, the losses share one signature)."""
    moved, q, log_det, sq_dist = jko_terms(block, obs, actions, q_fn)
    return jko_objective(moved, q, log_det, sq_dist, block.tau, alpha, block.config.box_weight).mean()


def langevin_fm_loss(block: JKOBlock, obs: torch.Tensor, actions: torch.Tensor, q_fn: QFunction, alpha: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The Jacobian-free ablation (DESIGN.md §2): flow matching onto one Langevin step of ``F``.

    Targets ``a' = a + τ·∇_a Q(s, a) + sqrt(2ατ)·ξ``, ``ξ ~ N(0, I)``: one Euler–Maruyama step of the
    Langevin diffusion whose law follows the Fokker–Planck equation, the Wasserstein gradient flow
    of ``F``. The block is fitted on the straight path ``x_t = (1 − t)·a + t·a'`` with target
    ``u = (a' − a)/τ``, so its M sub-steps of size ``τ/M`` (times ``t_m = m/M``) integrate the learnt
    marginal velocity from ``a`` towards ``a'``. The fitted velocity is the conditional mean of
    ``(a' − a)/τ`` given ``(x_t, t)``; at ``t = 0`` (``x_0 = a``) that is just ``∇_a Q``, so one sub-step
    would average the noise away and lose the entropy term: the config demands M ≥ 2.
    No Jacobian, no log-det; the price is a biased step (explicit, not proximal) and no exact
    objective to certify, though :func:`measure_block` still measures the block exactly.
    """
    tau = block.tau.item()
    leaf = actions.detach().requires_grad_(True)
    with torch.enable_grad():
        grad_q, = torch.autograd.grad(q_fn(obs, leaf).sum(), leaf)  # leaves any critic's .grad alone
    noise = torch.randn(actions.shape, generator=generator, dtype=actions.dtype, device=actions.device)
    targets = actions + tau * grad_q + math.sqrt(2 * alpha * tau) * noise
    t = torch.rand(actions.shape[0], generator=generator, dtype=actions.dtype, device=actions.device)
    x_t = (1 - t.unsqueeze(-1)) * actions + t.unsqueeze(-1) * targets
    return F.mse_loss(block.field(obs, x_t, t), (targets - actions) / tau)


LOSSES = {"jko": jko_loss, "langevin_fm": langevin_fm_loss}


def block_trainer(block: JKOBlock, obs_pool: torch.Tensor, action_pool: torch.Tensor, q_fn: QFunction,
                  config: BlockConfig, generator: torch.Generator | None = None) -> Callable[[], float]:
    """A function doing one Adam step of ``config.objective`` on a minibatch of the pool; returns its loss.

    Gradients go to the block's parameters only (``torch.autograd.grad``), so a critic behind
    ``q_fn`` keeps its ``.grad``. ``swfp bench compute`` times exactly this step.
    """
    loss_fn = LOSSES[config.objective]
    params = list(block.requires_grad_(True).train().parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)

    def step() -> float:
        idx = torch.randint(len(action_pool), (config.batch_size,), generator=generator, device=action_pool.device)
        loss = loss_fn(block, obs_pool[idx], action_pool[idx], q_fn, config.alpha, generator)
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        optimizer.step()
        return loss.item()
    return step


def train_block(block: JKOBlock, obs_pool: torch.Tensor, action_pool: torch.Tensor, q_fn: QFunction,
                config: BlockConfig, generator: torch.Generator | None = None) -> dict[str, float]:
    """Fit ``block`` with ``config.objective`` for J Adam steps on minibatches of a fixed pool.

    ``(obs_pool, action_pool)`` are ``(s, a ~ π_n)`` pairs drawn once (no graph) from the current
    cascade, so a step (:func:`block_trainer`) never touches the earlier chain: its cost is that of
    the block alone. τ is the block's own (``block.tau``). Returns the first step's
    loss (the identity's, for ``"jko"``), the mean loss over the last 10% of steps, and the median
    wall-clock time per gradient step.
    """
    if action_pool.requires_grad:
        raise ValueError("the action pool carries a graph: draw it under torch.no_grad(), or every step "
                         "would back-propagate through the earlier chain")
    step = block_trainer(block, obs_pool, action_pool, q_fn, config, generator)
    losses, step_times = [], []
    for _ in range(config.grad_steps):
        start = time.perf_counter()
        losses.append(step())
        step_times.append(time.perf_counter() - start)
    tail = losses[-max(1, len(losses) // 10):]
    return {"loss_first": losses[0], "loss_last": sum(tail) / len(tail), "step_time_s": statistics.median(step_times)}


@torch.no_grad()
def measure_block(block: JKOBlock, obs: torch.Tensor, actions: torch.Tensor, q_fn: QFunction, alpha: float,
                  tau: float | None = None) -> dict[str, float | bool]:
    """The trust-region measurement of a trained block on HELD-OUT ``(s, a ~ π_n)`` pairs.

    **Free-energy change without any density.** With ``a' = T(a)``, ``a ~ π_n``, the change of
    variables gives ``log π_{n+1}(a') = log π_n(a) − log|det ∂_a T(a)|``, so

        F(π_{n+1}) = E_{a~π_n}[−Q(s, T(a)) + α·log π_n(a) − α·log|det ∂_a T(a)|]
        F(π_n)     = E_{a~π_n}[−Q(s, a)    + α·log π_n(a)]
        ΔF         = E[−Q(s, T(a)) + Q(s, a) − α·log|det ∂_a T(a)|]

    ``log π_n(a)`` cancels sample by sample: no base density, no inversion, and a paired,
    low-variance estimator. (It assumes ``T`` is a bijection, checked below by inverting it.)

    **Trust-region certificate.** ``E‖T(a) − a‖²`` (``transport_cost``) bounds ``W₂²(π_{n+1}, π_n)``
    from above, since ``(a, T(a))`` is one coupling; ``w2_upper`` is its square root. The block's
    objective (1) minus the identity's (``T = id`` has ``L = E[−Q(s, a)]``) is
    ``objective_gap = ΔF + transport_cost/(2τ)``. Whenever training took the objective below the
    identity's (``objective_gap ≤ 0``, measured here on held-out data) this is the JKO inequality
    ``F(π_{n+1}) + W₂²/(2τ) ≤ F(π_n)``, i.e. ``w2_upper ≤ sqrt(2τ·(−ΔF)) = trust_bound``: the block
    moved the policy by at most what its free-energy gain pays for. ``w2_upper ≤ trust_bound`` is thus
    checkable and certifies ``W₂(π_{n+1}, π_n) ≤ trust_bound``.

    **Entropy, incrementally.** ``entropy_change = E log|det ∂_a T(a)|`` is exactly
    ``H(π_{n+1}(·|s)) − H(π_n(·|s))`` averaged over the states (the same change of variables), so the
    cascade's entropy can be tracked block by block without its K-step density. ``outside_box`` is
    the share of ``T(a)``'s components outside ``[-1, 1]``.

    ``accepted``: ``ΔF < 0``, every quantity finite, and ``T`` inverts on these samples (so the
    cascade's ``log_prob`` works on its own actions; a folding ``T`` would also void the ΔF formula).
    ``tau`` defaults to the block's own.
    """
    tau = block.tau.item() if tau is None else tau
    moved, q_new, log_det, sq_dist = jko_terms(block, obs, actions, q_fn)
    q_old = q_fn(obs, actions)
    delta_q, entropy_gain = (q_new - q_old).mean().item(), (alpha * log_det).mean().item()
    delta_f = -delta_q - entropy_gain
    transport = sq_dist.mean().item()
    outside = (moved.abs() > 1).float().mean().item()
    try:
        invertible = bool(torch.allclose(block.inverse(obs, moved), actions, atol=1e-3, rtol=0))
    except InversionError:
        invertible = False
    metrics = {"delta_free_energy": delta_f, "delta_q": delta_q, "entropy_gain": entropy_gain,
               "transport_cost": transport, "w2_upper": math.sqrt(transport) if transport >= 0 else math.nan,
               "trust_bound": math.sqrt(2 * tau * max(-delta_f, 0.0)) if math.isfinite(delta_f) else math.nan,
               "objective_gap": delta_f + transport / (2 * tau), "entropy_change": log_det.mean().item(),
               "outside_box": outside}
    finite = all(math.isfinite(v) for v in metrics.values())
    return {**metrics, "invertible": invertible, "accepted": finite and invertible and delta_f < 0}


def proximal_fraction(block: JKOBlock, obs_pool: torch.Tensor, action_pool: torch.Tensor, obs: torch.Tensor,
                      actions: torch.Tensor, q_fn: QFunction, alpha: float, steps: int = 2000, lr: float = 1e-3,
                      generator: torch.Generator | None = None) -> float:
    """How far ``block`` got toward the proximal optimum of its own objective, as a fraction.

    A reference block of the same architecture, τ and α is trained from the identity for ``steps`` Adam steps
    at ``lr`` on the same pool against the same (frozen) ``q_fn``; on the held-out ``(obs, actions)`` the
    fraction is ``(L(id) − L(block)) / (L(id) − L(reference))``, with ``L`` equation (1) and the box term.
    DESIGN.md §3 measured the first schedule's blocks (500 steps at lr 3e-4, 64×64) at ~40% this way.
    ``nan`` when the reference does not improve on the identity.
    """
    config = dataclasses.replace(block.config, tau=block.tau.item(), alpha=alpha, lr=lr, grad_steps=steps)
    reference = JKOBlock(block.obs_dim, block.act_dim, config).to(obs_pool.device)
    train_block(reference, obs_pool, action_pool, q_fn, config, generator)
    losses = {}
    identity = JKOBlock(block.obs_dim, block.act_dim, config).to(obs.device)
    for name, candidate in (("identity", identity), ("block", block), ("reference", reference)):
        with torch.no_grad():
            losses[name] = jko_loss(candidate, obs, actions, q_fn, alpha).item()
    reachable = losses["identity"] - losses["reference"]
    return (losses["identity"] - losses["block"]) / reachable if reachable > 0 else math.nan


def adapt_tau(tau: float, w2: float, radius: float, factor_bounds: tuple[float, float] = (0.5, 2.0)) -> float:
    """The next block's τ, so that its W₂ move stays near the trust radius δ = ``radius``.

    ``τ_next = τ·clip(δ / W₂, lo, hi)`` with ``W₂`` the last block's measured ``w2_upper``. For small τ a
    JKO step moves each action by ``T(a) − a ≈ τ·u`` with ``u ≈ ∇_a Q − α·∇_a log π_n`` (the Wasserstein
    gradient of ``F``), independent of τ to first order, so ``W₂ ∝ τ`` and the ratio rescales it onto
    δ. The clip keeps one noisy measurement from moving τ by more than the factor bounds. A block
    that did not move (``W₂ = 0``) grows τ by ``hi``; a non-finite ``W₂`` (a failed block) shrinks it by ``lo``.
    """
    lo, hi = factor_bounds
    if not (tau > 0 and radius > 0 and 0 < lo <= 1 <= hi):
        raise ValueError(f"need tau > 0, radius > 0 and 0 < lo <= 1 <= hi, got tau={tau}, radius={radius}, "
                         f"factor_bounds={factor_bounds}")
    if not math.isfinite(w2):
        return tau * lo
    return tau * (hi if w2 <= 0 else min(max(radius / w2, lo), hi))
