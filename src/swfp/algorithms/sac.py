"""Soft Actor-Critic with a tanh-squashed Gaussian actor (Haarnoja et al., 2018, arXiv 1812.05905).

Used to train the experts that generate demonstrations, and (in the baselines) as Gaussian SAC
from scratch / RLPD. Settings follow the paper's v2 defaults as implemented by CleanRL's
``sac_continuous_action.py`` and Stable-Baselines3: two critics with clipped double-Q targets,
Polyak rate 0.005, learning rates 3e-4, batch 256, γ = 0.99, automatic temperature toward the
target entropy ``−dim(A)`` starting at α = 1. The critic ensemble is evaluated in one batched
pass (:class:`swfp.critic.QEnsemble`); ``layer_norm=True`` gives RLPD's critics. One deliberate
difference from CleanRL/SB3: the actor maximises the ensemble *mean* Q (as REDQ and RLPD do)
rather than the minimum, so the pessimism lives in the critic target only; with two critics the
two differ little, and the shipped experts were trained this way.

Actions live in the normalised box ``[-1, 1]^d``:

    a = tanh(u),  u ~ N(μ(s), σ(s)²),
    log π(a|s) = log N(u; μ, σ²) − Σ_i log(1 − tanh(u_i)² + ε).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from swfp.algorithms.network_policy import Actor
from swfp.buffer import Batch
from swfp.critic import Critic, CriticConfig
from swfp.nets import mlp

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class SACConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    polyak: float = 0.005
    batch_size: int = 256
    init_alpha: float = 1.0
    target_entropy: float | None = None  # None -> -dim(A)
    ensemble_size: int = 2
    layer_norm: bool = False
    backup_entropy: bool = True  # the −α·log π(a'|s') term in the critic target (RLPD turns it off)
    init_std: float | None = None  # the actor's σ(s) at the start (None: e^-1.5 ≈ 0.22 from the log-σ squashing)

    def __post_init__(self):
        self.hidden_dims = tuple(self.hidden_dims)  # gamma and polyak are checked by the CriticConfig SAC builds
        if self.batch_size < 1 or self.init_alpha <= 0:
            raise ValueError("batch_size must be >= 1 and init_alpha > 0")
        if self.init_std is not None and not math.exp(LOG_STD_MIN) < self.init_std < math.exp(LOG_STD_MAX):
            raise ValueError(f"init_std must be in (e^{LOG_STD_MIN:g}, e^{LOG_STD_MAX:g}), got {self.init_std}")


class GaussianActor(Actor):
    """``s -> (μ, log σ)``; actions ``tanh(μ + σ·ξ)`` with the change-of-variables log-density. The acting
    network of SAC and RLPD runs (and of the experts); its deterministic action is ``tanh(μ)``."""

    kind = "tanh-gaussian"

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: tuple[int, ...], init_std: float | None = None):
        super().__init__()
        self.hidden_dims = tuple(hidden_dims)
        self.net = mlp(obs_dim, hidden_dims, 2 * act_dim, activation=nn.ReLU)
        if init_std is not None:  # the log-σ head's bias that the squashing in forward() maps to log(init_std)
            squashed = (math.log(init_std) - LOG_STD_MIN) / (0.5 * (LOG_STD_MAX - LOG_STD_MIN)) - 1
            with torch.no_grad():
                self.net[-1].bias[act_dim:] = math.atanh(squashed)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    @staticmethod
    def _log_prob(mean: torch.Tensor, log_std: torch.Tensor, u: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log N(u; μ, σ²) − Σ_i log(1 − tanh(u_i)² + ε)`` for ``action = tanh(u)``."""
        log_prob = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob - torch.log1p(-action.pow(2) + 1e-6).sum(-1)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        action = torch.tanh(u)
        return action, self._log_prob(mean, log_std, u, action)

    def actions(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return torch.tanh(self(obs)[0]) if deterministic else self.sample(obs)[0]

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The density :meth:`sample` draws from, of actions in ``[-1, 1]``; actions on the boundary are moved
        inside by ``1e-6`` first, as Stable-Baselines3's ``TanhBijector.inverse`` does (``tanh`` reaches ±1
        in float32 for ``|u| > 9``, and ``atanh(±1)`` is infinite)."""
        actions = actions.clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        mean, log_std = self(obs)
        return self._log_prob(mean, log_std, torch.atanh(actions), actions)

    def spec(self) -> dict:
        return {"hidden_dims": list(self.hidden_dims)}

    @classmethod
    def from_spec(cls, obs_dim: int, act_dim: int, spec: dict) -> "GaussianActor":
        return cls(obs_dim, act_dim, tuple(spec["hidden_dims"]))


class SAC:
    """The SAC learner: ``update(batch)`` does one critic, actor and temperature step."""

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig, critic: Critic | None = None,
                 device: torch.device | str = "cpu"):
        """``critic``: an existing critic to train (the fine-tuning harness's shared one, on ``device``); by
        default one built from ``config``. Actor, critic and temperature live on ``device``."""
        self.config = config
        self.actor = GaussianActor(obs_dim, act_dim, config.hidden_dims, config.init_std).to(device)
        self.critic = critic or Critic(obs_dim, act_dim, CriticConfig(
            hidden_dims=config.hidden_dims, ensemble_size=config.ensemble_size, layer_norm=config.layer_norm,
            lr=config.critic_lr, gamma=config.gamma, polyak=config.polyak), device)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=device, requires_grad=True)
        self.target_entropy = -float(act_dim) if config.target_entropy is None else config.target_entropy
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step (entropy term in the target if ``backup_entropy``), then :meth:`update_actor`."""
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(batch.next_observations)
        next_log_prob = next_log_prob if self.config.backup_entropy else None
        metrics = self.critic.update(batch, next_actions, next_log_prob, self.alpha)
        return {**metrics, **self.update_actor(batch.observations)}

    def update_actor(self, obs: torch.Tensor) -> dict[str, float]:
        """``min E[α·log π(a|s) − Q(s, a)]`` by the reparameterisation trick, and α toward the target entropy."""
        actions, log_prob = self.actor.sample(obs)
        actor_loss = (self.alpha * log_prob - self.critic.value(obs, actions)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return {"actor_loss": actor_loss.item(), "alpha": self.alpha.item(), "entropy": -log_prob.mean().item()}

    def state_dict(self) -> dict:
        """Actor, temperature and their optimisers (the critic is checkpointed by its owner)."""
        return {"actor": self.actor.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(), "alpha_opt": self.alpha_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
