"""Q-function ensembles with Polyak-averaged targets, and the one TD update every method shares.

Target (DESIGN.md §3), with ``a' ~ π(·|s')`` drawn by the caller from its current policy:

    y = r + γ·(1 − terminal)·( min_i Q̄_i(s', a') − α·log π(a'|s') ),

where ``terminal`` is true termination only (time-limit truncations bootstrap) and the entropy
term is dropped when the caller passes no log-density (SWFP's default: its entropic
regularisation acts inside every block's JKO objective instead).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from swfp.buffer import Batch
from swfp.devices import resolve_device
from swfp.nets import EnsembleLinear, ensemble_mlp


class QEnsemble(nn.Module):
    """``E`` independent Q-networks ``Q_i(s, a)`` evaluated in one batched pass.

    ``forward`` returns ``(E, B)``. Clipped double Q (Fujimoto et al., 2018) takes the minimum
    over the ensemble for targets; ``E = 2`` is the TD3/SAC default, larger ensembles with a
    random subset min are REDQ/RLPD's choice.

    Actions are clipped to the box ``[-1, 1]^d`` before the networks see them, so
    ``Q(s, a) = Q(s, clip(a))``: exactly what the environment executes (:mod:`swfp.envs` clips at
    execution). A flow's samples are unbounded (clipping inside the chain would break its exact
    density) and about a tenth of a BC flow's action components fall outside the box on our tasks, so
    an unclipped critic is asked for values it has no data for, and with target actions drawn from
    the policy it bootstraps its own extrapolation, the likely cause of SWFP's divergence on
    Walker2d-v5, seed 2 (mean Q 60 → 5·10⁷ between 210k and 285k env steps; not proven). FQL clips
    the same way before its critic.
    Out of the box the gradient in those components is zero, so an actor or a block is not pushed
    further out.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: tuple[int, ...] = (256, 256),
                 ensemble_size: int = 2, layer_norm: bool = False):
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        self.ensemble_size = ensemble_size
        self.net = ensemble_mlp(ensemble_size, obs_dim + act_dim, hidden_dims, 1, layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor,
                members: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """``(E', B)`` values of the ``members`` (all by default), only those members' networks evaluated."""
        x = torch.cat([obs, actions.clamp(-1.0, 1.0)], dim=-1)
        count = len(range(self.ensemble_size)[members]) if isinstance(members, slice) else len(members)
        x = x.unsqueeze(0).expand(count, *x.shape)
        for layer in self.net:
            x = layer(x, members) if isinstance(layer, EnsembleLinear) else layer(x)
        return x.squeeze(-1)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """``θ̄ ← (1 − rate)·θ̄ + rate·θ``."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, rate)


@dataclass
class CriticConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    ensemble_size: int = 2
    target_subset: int | None = None  # REDQ: min over a random subset of this size (None: all members)
    layer_norm: bool = False
    lr: float = 3e-4
    gamma: float = 0.99
    polyak: float = 0.005

    def __post_init__(self):
        self.hidden_dims = tuple(self.hidden_dims)
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.polyak <= 1:
            raise ValueError(f"polyak must be in (0, 1], got {self.polyak}")
        if self.target_subset is not None and not 1 <= self.target_subset <= self.ensemble_size:
            raise ValueError(f"target_subset must be in [1, ensemble_size={self.ensemble_size}], "
                             f"got {self.target_subset}")


class Critic:
    """A Q-ensemble, its Polyak target and optimiser on ``device``; :meth:`update` is one TD step on a batch
    already there."""

    def __init__(self, obs_dim: int, act_dim: int, config: CriticConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = resolve_device(device)
        self.q = QEnsemble(obs_dim, act_dim, config.hidden_dims, config.ensemble_size,
                           config.layer_norm).to(self.device)
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.lr)

    @torch.no_grad()
    def td_target(self, batch: Batch, next_actions: torch.Tensor, next_log_prob: torch.Tensor | None = None,
                  alpha: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``y = r + γ^k (1 − terminal)(min_i Q̄_i(s', a') − α·log π(a'|s'))`` (entropy term only if given), with
        ``k`` the environment steps the transition spans (1, or an action chunk's, :mod:`swfp.chunks`)."""
        members = slice(None)
        if self.config.target_subset is not None:  # only the drawn members' networks are evaluated
            drawn = torch.randperm(self.config.ensemble_size, device=self.device)
            members = drawn[: self.config.target_subset].sort().values
        next_v = self.target(batch.next_observations, next_actions, members).min(0).values
        if next_log_prob is not None:
            next_v = next_v - alpha * next_log_prob
        return batch.rewards + self.config.gamma ** batch.steps * (1 - batch.terminals) * next_v

    def update(self, batch: Batch, next_actions: torch.Tensor, next_log_prob: torch.Tensor | None = None,
               alpha: float | torch.Tensor = 0.0) -> dict[str, float]:
        """One gradient step on ``Σ_i E(Q_i(s, a) − y)²``, then the Polyak update of the target."""
        target = self.td_target(batch, next_actions, next_log_prob, alpha)
        q = self.q(batch.observations, batch.actions)
        loss = F.mse_loss(q, target.expand_as(q)) * q.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        polyak_update(self.target, self.q, self.config.polyak)
        return {"critic_loss": loss.item(), "q": q.mean().item()}

    def value(self, obs: torch.Tensor, actions: torch.Tensor, reduce: str = "mean", members: slice = slice(None),
              pessimism: float = 0.0) -> torch.Tensor:
        """``(B,)`` ensemble mean or min of ``Q_i(s, a)`` over ``members``; differentiable in ``actions``
        (parameters frozen for the call, so a policy's gradient does not touch the critic's ``.grad``).

        ``pessimism`` c > 0 (with ``reduce="mean"``) gives the lower bound ``mean_i Q_i − c·std_i Q_i``
        (population std, so with two members c = 1 is their min), the pessimistic value SWFP's blocks climb."""
        self.q.requires_grad_(False)
        try:
            q = self.q(obs, actions, members)
        finally:
            self.q.requires_grad_(True)
        if reduce == "min":
            return q.min(0).values
        if pessimism and q.shape[0] > 1:
            return q.mean(0) - pessimism * q.std(0, correction=0)
        return q.mean(0)

    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "target": self.target.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
