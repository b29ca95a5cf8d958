"""DSRL: steer the frozen flow by reinforcement learning over its input noise (Wagenmaker et al., 2025,
"Steering Your Diffusion Policy with Latent Space Reinforcement Learning", arXiv 2506.15799).

The pre-trained flow ``a = f(s, w)`` (its K Euler steps from ``x0 = w``) is never changed; a SAC
actor chooses the noise ``w = b·tanh(u)``, ``u ~ N(μ(s), σ(s)²)``, with the noise bound ``b``. We
implement the paper's default variant, **DSRL-NA** (noise aliasing), as in the authors' SB3
implementation (read from ``stable_baselines3/dsrl/dsrl.py`` and ``cfg/gym/dsrl_*.yaml`` of the
public forks of ``ajwagen/dsrl``):

* ``Q^A(s, a)`` — the harness's shared critic, on executed actions (so the demonstrations can be in
  its replay, and it is warmed up on them like every other critic here), target
  ``r + γ(1 − d)(min Q̄^A(s', f(s', w')) − α·log π(w'|s'))``, ``w' ~ π``;
* ``Q^W(s, w)`` — distilled from ``Q^A(s, f(s, w))`` member by member at ``w ~ N(0, I)``;
* the actor maximises ``Q^W`` with SAC's entropy term and α tuned toward target entropy 0.

Settings from their Hopper config: noise bound b = 1.5 (their Walker2d uses 2.5; we keep 1.5 for
every task), target entropy 0, initial α = 1, lr 3e-4, batch 256, LayerNorm-free 2-critic
ensembles here (theirs have LayerNorm and width 128–2048 by task; ours are the harness's
2×256 for ``Q^A`` and 3×128 for the actor and ``Q^W``). **Adapted to our budget:** one ``Q^A``,
one ``Q^W`` and one actor step per environment step (theirs: UTD 20 and 10 distillation steps
per train call), and the critic warm-up on the demonstrations replaces their 2001 initial
base-policy steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from swfp.algorithms.base import NetworkPolicy, OffPolicyConfig, OffPolicyLearner, optimizer_step
from swfp.algorithms.sac import SAC, SACConfig
from swfp.buffer import Batch
from swfp.critic import Critic, CriticConfig


@dataclass
class DSRLConfig(OffPolicyConfig):
    noise_bound: float = 1.5             # b: |w_i| <= b
    actor_hidden_dims: tuple[int, ...] = (128, 128, 128)
    noise_critic_hidden_dims: tuple[int, ...] = (128, 128, 128)
    actor_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        self.actor_hidden_dims = tuple(self.actor_hidden_dims)
        self.noise_critic_hidden_dims = tuple(self.noise_critic_hidden_dims)
        if not self.noise_bound > 0:
            raise ValueError(f"noise_bound must be > 0, got {self.noise_bound}")


class DSRL(OffPolicyLearner):
    name = "dsrl"
    description = "DSRL-NA: SAC over the frozen flow's input noise (noise-aliased critic), flow unchanged"
    config_class = DSRLConfig

    def __init__(self, policy, demonstrations, config=None, total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        cfg = self.config
        obs_dim, act_dim = self.obs_dim, self.act_dim
        self.flow = policy.cascade.base  # frozen
        self.noise_critic = Critic(obs_dim, act_dim, CriticConfig(
            hidden_dims=cfg.noise_critic_hidden_dims, ensemble_size=cfg.critic.ensemble_size, lr=cfg.critic.lr))
        # SAC over y = w / b in [-1, 1]: its actor and temperature, maximising Q^W.
        # σ starts at 1 as in their SB3 actor (a plain linear log-σ head): w = b·tanh(u) then spreads about
        # as the flow's own N(0, I) noise, so the steered policy starts as the pre-trained stochastic one
        self.sac = SAC(obs_dim, act_dim, SACConfig(hidden_dims=cfg.actor_hidden_dims, actor_lr=cfg.actor_lr,
                                                   init_alpha=cfg.init_alpha, target_entropy=cfg.target_entropy,
                                                   init_std=1.0),
                       critic=self.noise_critic)

    def actions_from_latent(self, obs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.flow.sample(obs, noise=self.config.noise_bound * y)[0]

    def target_actions(self, next_obs):
        y, log_prob = self.sac.actor.sample(next_obs)
        return self.actions_from_latent(next_obs, y), log_prob

    def update(self, batch: Batch) -> dict[str, float]:
        metrics = self.td_update(batch, self.sac.alpha)
        obs = batch.observations
        with torch.no_grad():  # Q^W(s, w) <- Q^A(s, f(s, w)), w ~ N(0, I), every member on its own target
            w = torch.randn(obs.shape[0], self.flow.act_dim)
            target = self.critic.q(obs, self.flow.sample(obs, noise=w)[0])
        distill_loss = F.mse_loss(self.noise_critic.q(obs, w / self.config.noise_bound), target)
        optimizer_step(self.noise_critic.optimizer, distill_loss)
        return {**metrics, "noise_critic_loss": distill_loss.item(), **self.sac.update_actor(obs)}

    def policy(self) -> NetworkPolicy:
        actor = self.sac.actor

        def act(obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
            y = torch.tanh(actor(obs)[0]) if deterministic else actor.sample(obs)[0]
            return self.actions_from_latent(obs, y)
        return NetworkPolicy(act, self._policy, {"actor": actor, "flow": self.flow},
                             {"algorithm": self.name, "kind": "noise-actor+flow", "task": self._policy.task_id,
                              "noise_bound": self.config.noise_bound})

    def status(self) -> dict[str, float]:
        return {**super().status(), "alpha": float(self.sac.alpha)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "sac": self.sac.state_dict(), "noise_critic": self.noise_critic.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sac.load_state_dict(state["sac"])
        self.noise_critic.load_state_dict(state["noise_critic"])
