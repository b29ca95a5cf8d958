"""Gaussian SAC from scratch (``sac``) and RLPD (``rlpd``): the non-flow reference points.

Neither uses the pre-trained flow as its policy: a tanh-Gaussian actor is trained from random
initialisation (:class:`swfp.algorithms.sac.SAC`, on the harness's shared critic). They start from
random actions, so their "before" return is a random policy's, and they show what the flow methods'
head start is worth.

* ``sac`` — Haarnoja et al. (2018), settings of CleanRL / SB3: 2 critics, min target with the
  entropy term, target entropy −dim(A), initial α = 1, lr 3e-4, batch 256, τ = 0.005, 5000
  random-action steps before learning; online data only.
* ``rlpd`` — Ball et al. (2023, arXiv 2302.02948), read from ``ikostrikov/rlpd``
  (``configs/rlpd_config.py``, ``rlpd/agents/sac/sac_learner.py``, ``train_finetuning.py``):
  symmetric sampling (each batch 50 % demonstrations, 50 % online), **10 LayerNorm critics with
  the target's min over a random subset of 2** and the actor on the mean of all 10, target entropy
  −dim(A)/2, initial α = 1, entropy backup on (their locomotion setting), 5000 random-action steps.
  **UTD: RLPD uses 20 critic updates per environment step; our default is 1**, the same as every
  other method here, so that wall time and update counts compare on equal terms on a 2-core
  machine; ``--set utd_ratio=20`` gives their setting (with one actor update per critic update
  rather than their one per 20).

Observations are standardised with the pre-trained run's statistics, as for every method in the
harness (a fixed affine map, learned from the demonstrations' states only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from swfp.algorithms.base import OffPolicyConfig, OffPolicyLearner
from swfp.algorithms.network_policy import NetworkPolicy
from swfp.algorithms.sac import SAC, SACConfig
from swfp.buffer import Batch
from swfp.critic import CriticConfig


@dataclass
class SACFromScratchConfig(OffPolicyConfig):
    offline_fraction: float = 0.0
    critic_warmup_steps: int = 0
    learning_starts: int = 5_000
    actor_hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy_per_dim: float = -1.0  # target entropy = this × dim(A)
    backup_entropy: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.actor_hidden_dims = tuple(self.actor_hidden_dims)

    def sac_config(self, act_dim: int) -> SACConfig:
        return SACConfig(hidden_dims=self.actor_hidden_dims, actor_lr=self.actor_lr, alpha_lr=self.alpha_lr,
                         batch_size=self.batch_size, init_alpha=self.init_alpha,
                         target_entropy=self.target_entropy_per_dim * act_dim, backup_entropy=self.backup_entropy)


@dataclass
class RLPDConfig(SACFromScratchConfig):
    critic: CriticConfig = field(default_factory=lambda: CriticConfig(ensemble_size=10, target_subset=2,
                                                                      layer_norm=True))
    offline_fraction: float = 0.5
    target_entropy_per_dim: float = -0.5


class SACFromScratch(OffPolicyLearner):
    name = "sac"
    description = "Gaussian SAC from scratch on online data only (no demonstrations, no pre-trained flow)"
    config_class = SACFromScratchConfig
    use_demonstrations = False

    def __init__(self, policy, demonstrations, config=None, total_env_steps: int = 300_000):
        """``policy`` gives only the observation statistics and the action box (any
        :class:`~swfp.policy.EnvPolicy`: the pre-trained flow's here, an expert's own in :mod:`swfp.expert`)."""
        super().__init__(policy, demonstrations, config, total_env_steps)
        obs_dim, act_dim = self.obs_dim, self.act_dim
        self.sac = SAC(obs_dim, act_dim, self.config.sac_config(act_dim), critic=self.critic, device=self.device)
        self.acting = NetworkPolicy.beside(self.sac.actor, self.name, self._policy)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Uniform random actions for the first ``learning_starts`` env steps, then the stochastic actor."""
        if self.env_step < self.config.learning_starts:
            return self.rng.uniform(-1.0, 1.0, (len(obs), self.act_dim)).astype(np.float32)
        return self.policy().normalized_actions(obs)

    def update(self, batch: Batch) -> dict[str, float]:
        return self.sac.update(batch)

    def status(self) -> dict[str, float]:
        return {**super().status(), "alpha": float(self.sac.alpha)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "sac": self.sac.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sac.load_state_dict(state["sac"])


class RLPD(SACFromScratch):
    name = "rlpd"
    description = "RLPD: SAC with demonstrations at 50/50 in every batch, 10 LayerNorm critics (subset-2 min)"
    config_class = RLPDConfig
    use_demonstrations = True
