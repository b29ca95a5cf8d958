"""SWFP v2's online JKO step: the newest block trained one step per critic update, frozen every S env steps.

DESIGN.md §3. The first schedule trained each block for J steps on a pool drawn once, every 5000 env
steps, against a critic that kept valuing a policy that barely moved. Here the newest block ``L``
is *live*: like an SAC actor it takes one optimiser step on its JKO objective per critic update,

    L(φ) = E_{s, a~π_n}[ −Q̃(s, T(a)) − α·log|det ∂_a T(a)| + ‖T(a) − a‖²/(2τ) + (λ/2)‖T(a) − clip(T(a))‖² ]

(:func:`swfp.blocks.jko_objective`), anchored to the frozen ``π_n`` through the prefix actions
``a ~ π_n``; the policy that acts and that the critic's targets use is ``π_n ∘ L``. Every S env steps
the learner measures ``L`` on evidence it did not train on, and either freezes and appends it (the
JKO step is taken) or discards it; a fresh zero block then starts. This module holds the pieces that
know nothing of environments or critics:

* :class:`PrefixPool` — the ``(s, a ~ π_n(·|s))`` pairs the live block trains on: states recorded
  while acting (the most recent ``capacity``), their prefix actions drawn without gradient, recorded
  as acted and redrawn for every state whenever ``π_n`` changes. A live step reads the pool only, so
  its cost is that of the block alone, whatever the chain's length (O(1) in K and n).
* :class:`LiveBlock` — the block, its optimiser and one step of the objective.
* :class:`Temperature` — α tuned toward a target entropy, fed the cascade's entropy tracked exactly
  and incrementally: ``H(π_n ∘ L) = H(π_n) + E log|det ∂_a T_L(a)|``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from swfp.blocks import BlockConfig, JKOBlock, QFunction, jko_objective, jko_terms
from swfp.cascade import Cascade
from swfp.devices import resolve_device


class PrefixPool:
    """A ring of the last ``capacity`` acted states and their prefix actions ``a ~ π_n(·|s)``."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device | str = "cpu"):
        """On ``device``: the pool is the live block's training data, sampled every update (unlike the replay,
        it holds normalised states already on the device, and ``capacity`` is small: 10,000 rows by default)."""
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.device = resolve_device(device)
        self.obs = torch.zeros(capacity, obs_dim, device=self.device)
        self.prefix = torch.zeros(capacity, act_dim, device=self.device)
        self.capacity, self.size, self.next = capacity, 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: torch.Tensor, prefix: torch.Tensor) -> None:
        """Record acted ``(s, a ~ π_n)`` rows (no graph), overwriting the oldest when full."""
        obs, prefix = obs[-self.capacity:].detach(), prefix[-self.capacity:].detach()
        rows = (self.next + torch.arange(len(obs), device=self.device)) % self.capacity
        self.obs[rows], self.prefix[rows] = obs, prefix
        self.next = (self.next + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    @torch.no_grad()
    def redraw(self, cascade: Cascade, chunk: int = 4096) -> None:
        """New prefix actions for every recorded state from the (new) frozen ``π_n``, fresh noise."""
        for start in range(0, self.size, chunk):
            rows = slice(start, min(start + chunk, self.size))
            self.prefix[rows] = cascade.sample(self.obs[rows])[0]

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size == 0:
            raise ValueError("the prefix pool is empty: act first")
        idx = torch.as_tensor(rng.integers(self.size, size=batch_size), device=self.device)
        return self.obs[idx], self.prefix[idx]

    def state_dict(self) -> dict:
        return {"obs": self.obs[: self.size].clone(), "prefix": self.prefix[: self.size].clone(),
                "next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.size = len(state["obs"])
        if self.size > self.capacity:
            raise ValueError(f"a pool of {self.size} rows does not fit capacity {self.capacity}")
        self.obs[: self.size], self.prefix[: self.size] = state["obs"], state["prefix"]
        self.next = int(state["next"])


class LiveBlock:
    """The newest block ``T_L = id + τ·u_φ`` (zero-initialised: the identity) and its Adam optimiser.

    ``step`` is one gradient step of the JKO objective on a minibatch of ``(s, a ~ π_n)`` pairs; the
    gradients go to the block's parameters only, so a critic behind ``q_fn`` keeps its ``.grad``.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: BlockConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.block = JKOBlock(obs_dim, act_dim, config).to(device)
        self.params = list(self.block.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)

    @property
    def tau(self) -> float:
        return self.block.tau.item()

    def loss(self, obs: torch.Tensor, prefix: torch.Tensor, q_fn: QFunction,
             alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The minibatch objective (with its graph), and the batch's ``log|det ∂T|`` and ``‖T(a) − a‖²``."""
        moved, q, log_det, sq_dist = jko_terms(self.block, obs, prefix, q_fn)
        return jko_objective(moved, q, log_det, sq_dist, self.block.tau, alpha, self.config.box_weight).mean(), \
            log_det, sq_dist

    def step(self, obs: torch.Tensor, prefix: torch.Tensor, q_fn: QFunction, alpha: float) -> dict[str, float]:
        """One Adam step on the objective; returns the loss and the batch's ``E log|det ∂T|`` and ``E‖T(a) − a‖²``
        (measured before the step)."""
        loss, log_det, sq_dist = self.loss(obs, prefix, q_fn, alpha)
        for p, g in zip(self.params, torch.autograd.grad(loss, self.params)):
            p.grad = g
        self.optimizer.step()
        return {"live_loss": loss.item(), "live_log_det": log_det.mean().item(),
                "live_transport": sq_dist.mean().item()}

    def state_dict(self) -> dict:
        return {"block": self.block.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.block.load_state_dict(state["block"])
        self.optimizer.load_state_dict(state["optimizer"])


class Temperature:
    """α tuned toward a target entropy with SAC's temperature loss ``−log α·(H̄ − H)`` and Adam on log α.

    SAC feeds it ``−log π(a|s)`` of fresh samples; a flow cascade's density costs K Jacobians per
    sample, so the learner feeds the entropy it tracks incrementally instead (module docstring).
    ``target=None`` keeps α fixed.
    """

    def __init__(self, alpha: float, target: float | None, lr: float = 3e-4):
        """On the CPU whatever the run's device: α is one number, fed and read as a Python float (a device tensor
        would cost a synchronising copy per update for nothing)."""
        if not (math.isfinite(alpha) and alpha >= 0) or (target is not None and alpha == 0):
            raise ValueError(f"alpha must be >= 0 (> 0 to be tuned toward a target entropy), got {alpha}")
        self.log_alpha = torch.tensor(math.log(alpha) if alpha > 0 else -math.inf, requires_grad=True)
        self.target = target
        self.optimizer = torch.optim.Adam([self.log_alpha], lr=lr)

    @property
    def alpha(self) -> float:
        return self.log_alpha.exp().item()

    def update(self, entropy: float) -> None:
        if self.target is None or not math.isfinite(entropy):
            return
        loss = -self.log_alpha * (self.target - entropy)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def state_dict(self) -> dict:
        return {"log_alpha": self.log_alpha.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])
