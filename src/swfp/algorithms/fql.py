"""FQL: Flow Q-Learning (Park, Li & Levine, 2025, arXiv 2502.02538).

Two policies: the multi-step BC flow ``f_θ(s, z)`` (K Euler steps from noise ``z``), trained only by
flow matching, and a **one-step policy** ``μ_ω(s, z)`` (an MLP from state and noise to action) that
acts and is trained against the critic while distilled toward the flow:

    L(ω) = −E[Q(s, μ_ω(s, z))]  +  α · E‖μ_ω(s, z) − f_θ(s, z)‖²,   z ~ N(0, I).

No gradient ever goes through the flow's chain (the distillation target is a no-grad K-step sample),
which is FQL's point. Settings read from ``agents/fql.py`` and the README of FQL's public code:
distillation α = 10 on the raw Q (their defaults ``alpha=10``, ``normalize_q_loss=False``; α is "tuned
for each environment", 3 to 300 in their tables). ``normalize_q=True`` divides the Q term by
``stop_grad(E|Q|)``, the variant their README recommends when sweeping α over 0.03 … 10, which makes
α scale-free: the raw default is far less BC-bound where |Q| is in the hundreds (α = 10 on Q ≈ 300 is
α ≈ 0.03 normalised). Q on the one-step action clipped to the box, the critic target's ``a'`` from
the one-step policy, lr 3e-4, batch 256, one update per environment step online, the flow keeps
its BC loss on the replay. Their networks are 4×512; ours are the pre-trained flow's and a 3×256
one-step policy.

**Adapted:** FQL trains both policies offline for 1M steps before going online; here the flow is
pre-trained, and the one-step policy (random at first) and the critic are trained together on the
demonstrations for ``critic_warmup_steps`` (5000) FQL updates before the first environment step, so
the one-step policy acts like the flow from the start. Critic: the harness's clipped double Q (FQL's
default aggregates the target by the mean of its two critics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swfp.algorithms.base import OffPolicyConfig, OffPolicyLearner, optimizer_step
from swfp.algorithms.network_policy import Actor, NetworkPolicy
from swfp.algorithms.bptt import q_loss
from swfp.buffer import Batch
from swfp.nets import mlp


@dataclass
class FQLConfig(OffPolicyConfig):
    critic_warmup_steps: int = 5_000     # full FQL updates on the demonstrations (the offline phase, shortened)
    distill_weight: float = 10.0         # α (FQL's default; tuned per environment in their paper)
    normalize_q: bool = False            # divide the Q term by stop_grad(E|Q|) (FQL's normalize_q_loss)
    actor_hidden_dims: tuple[int, ...] = (256, 256, 256)
    actor_lr: float = 3e-4
    flow_lr: float = 3e-4

    def __post_init__(self):
        super().__post_init__()
        self.actor_hidden_dims = tuple(self.actor_hidden_dims)
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")


class OneStepPolicy(Actor):
    """``μ_ω(s, z)``: state and noise to action in one forward pass, the policy an FQL run acts with (its
    deterministic action is ``μ_ω(s, 0)``). A deterministic map of its noise with no tractable inverse, so
    it has no exact density."""

    kind = "one-step-policy"
    no_density = ("FQL's one-step policy is a free-form network of its noise, with no tractable inverse or "
                  "Jacobian, so the density of its actions is unknown")

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: tuple[int, ...]):
        super().__init__()
        self.act_dim, self.hidden_dims = act_dim, tuple(hidden_dims)
        self.net = mlp(obs_dim + act_dim, hidden_dims, act_dim)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, noise], dim=-1))

    def actions(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        shape = (obs.shape[0], self.act_dim)
        noise = obs.new_zeros(shape) if deterministic else torch.randn(shape, dtype=obs.dtype, device=obs.device)
        return self(obs, noise).clamp(-1.0, 1.0)

    def spec(self) -> dict:
        return {"hidden_dims": list(self.hidden_dims)}

    @classmethod
    def from_spec(cls, obs_dim: int, act_dim: int, spec: dict) -> "OneStepPolicy":
        return cls(obs_dim, act_dim, tuple(spec["hidden_dims"]))


class FQL(OffPolicyLearner):
    name = "fql"
    description = "Flow Q-Learning: a one-step policy maximises Q while distilled toward the multi-step BC flow"
    config_class = FQLConfig

    def __init__(self, policy, demonstrations, config=None, total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        obs_dim, act_dim = self.obs_dim, self.act_dim
        self.flow = policy.cascade.base.requires_grad_(True)
        self.one_step = OneStepPolicy(obs_dim, act_dim, self.config.actor_hidden_dims).to(self.device)
        self.flow_optimizer = torch.optim.Adam(self.flow.parameters(), lr=self.config.flow_lr)
        self.actor_optimizer = torch.optim.Adam(self.one_step.parameters(), lr=self.config.actor_lr)
        # the one-step policy alone acts: the flow is its distillation target
        self.acting = NetworkPolicy.beside(self.one_step, self.name, self._policy)

    def target_actions(self, next_obs):
        return self.one_step.actions(next_obs), None

    def update(self, batch: Batch) -> dict[str, float]:
        metrics = self.td_update(batch)
        obs = batch.observations
        flow_loss = self.flow.flow_matching_loss(obs, batch.actions)
        optimizer_step(self.flow_optimizer, flow_loss)
        noise = torch.randn(obs.shape[0], self.one_step.act_dim, device=obs.device)
        with torch.no_grad():
            target = self.flow.sample(obs, noise=noise)[0]
        actions = self.one_step(obs, noise)
        distill = (actions - target).pow(2).mean()
        q = self.critic.value(obs, actions)  # the critic clips to the box
        q_term = q_loss(q) if self.config.normalize_q else -q.mean()
        optimizer_step(self.actor_optimizer, q_term + self.config.distill_weight * distill)
        return {**metrics, "flow_loss": flow_loss.item(), "distill_loss": distill.item(), "q_loss": q_term.item()}

    def warmup_update(self, batch: Batch) -> dict[str, float]:
        """The offline phase: full FQL updates on the demonstrations."""
        return self.update(batch)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "flow": self.flow.state_dict(), "one_step": self.one_step.state_dict(),
                "flow_optimizer": self.flow_optimizer.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.flow.load_state_dict(state["flow"])
        self.one_step.load_state_dict(state["one_step"])
        self.flow_optimizer.load_state_dict(state["flow_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
