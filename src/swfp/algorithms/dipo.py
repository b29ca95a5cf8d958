"""DIPO: move the stored actions along ∇ₐQ, then re-fit the whole flow to them by flow matching
(Yang et al., 2023, "Policy Representation via Diffusion Probability Model for Reinforcement
Learning", arXiv 2305.13122).

DIPO keeps an "action memory" of ``(s, a)`` pairs beside the critic's replay. Every update takes a
batch from it, improves its actions by gradient ascent on the critic,

    a ← clip(a + Adam step on −min_i Q_i(s, a)),  repeated ``action_steps`` times,

writes the improved actions back **in place** (so improvements accumulate over the run), and trains
the policy by behaviour cloning on them — here the flow's own flow-matching loss, so the whole
K-step flow moves toward the improved actions without any gradient through its chain. Settings read
from ``agent/DiPo.py`` and the README of ``BellmanTimeHut/DIPO``: Adam on the actions with lr 0.03
(eps 1e-5), 20 action-gradient steps, the gradient's global norm over the batch clipped to
``ratio × dim(A)`` (ratio 0.3 for Hopper, 0.08 for Walker2d; we use 0.3), actions clamped to the box
after every step, policy lr 3e-4 with its gradient norm clipped at 1 (their ``ac_grad_norm``, 1 for
Hopper and 2 for Walker2d; we use 1), batch 256, one update per environment step.

**Adapted:** the action memory starts with the demonstrations (DIPO starts from scratch, after 10k
random steps) and the flow starts pre-trained; the critic is the harness's (DIPO samples its target
actions from an EMA copy of the policy, we from the current flow, as every method here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from swfp.algorithms.base import OffPolicyConfig, OffPolicyLearner, optimizer_step
from swfp.buffer import Batch, ReplayBuffer
from swfp.devices import to_device, to_host


@dataclass
class DIPOConfig(OffPolicyConfig):
    action_lr: float = 0.03
    action_steps: int = 20
    action_grad_ratio: float = 0.3    # global gradient-norm clip = ratio × dim(A)
    flow_lr: float = 3e-4
    flow_grad_clip: float = 1.0       # global gradient-norm clip of the flow's re-fit (DIPO's ac_grad_norm)

    def __post_init__(self):
        super().__post_init__()
        if not (self.action_lr > 0 and self.action_steps >= 1 and self.action_grad_ratio > 0 and self.flow_lr > 0
                and self.flow_grad_clip > 0):
            raise ValueError("need action_lr > 0, action_steps >= 1, action_grad_ratio > 0, flow_lr > 0 and "
                             "flow_grad_clip > 0")


class DIPO(OffPolicyLearner):
    name = "dipo"
    description = "DIPO: replay actions moved along grad_a Q in place, the whole flow re-fit to them by flow matching"
    config_class = DIPOConfig

    def __init__(self, policy, demonstrations, config=None, total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        obs_dim, act_dim = self.obs_dim, self.act_dim
        demos = len(self.replay.offline) if demonstrations is not None else 0
        self.memory = ReplayBuffer(obs_dim, act_dim, demos + self.config.replay_capacity)
        if demos:
            offline = self.replay.offline
            self.memory.add(offline.observations, offline.actions, offline.rewards, offline.next_observations,
                            offline.terminals, offline.steps)
        self.flow = policy.cascade.base.requires_grad_(True)
        self.flow_optimizer = torch.optim.Adam(self.flow.parameters(), lr=self.config.flow_lr)

    def observe(self, obs, actions, rewards, next_obs, terminals, truncations=None, steps=None) -> None:
        super().observe(obs, actions, rewards, next_obs, terminals, truncations, steps)
        self.memory.add(*self.transitions(obs, actions, rewards, next_obs, terminals, steps))

    def target_actions(self, next_obs):
        return self.flow.sample(next_obs)[0], None

    def improve_actions(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """DIPO's action gradient: ``action_steps`` Adam steps on ``−min_i Q_i(s, a)``, clipped and clamped."""
        actions = actions.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([actions], lr=self.config.action_lr, eps=1e-5)
        max_norm = self.config.action_grad_ratio * actions.shape[-1]
        for _ in range(self.config.action_steps):
            optimizer.zero_grad(set_to_none=True)
            (-self.critic.value(obs, actions, "min")).sum().backward()
            torch.nn.utils.clip_grad_norm_([actions], max_norm)
            optimizer.step()
            with torch.no_grad():
                actions.clamp_(-1.0, 1.0)
        return actions.detach()

    def update(self, batch: Batch) -> dict[str, float]:
        metrics = self.td_update(batch)
        idx = self.rng.integers(0, len(self.memory), self.config.batch_size)
        obs = self._policy.normalize_obs(self.memory.observations[idx])
        before = to_device(self.memory.actions[idx], self.device)
        improved = self.improve_actions(obs, before)
        self.memory.actions[idx] = to_host(improved)  # DIPO's memory is replay: on the host
        flow_loss = self.flow.flow_matching_loss(obs, improved)
        optimizer_step(self.flow_optimizer, flow_loss, self.config.flow_grad_clip)
        return {**metrics, "flow_loss": flow_loss.item(),
                "action_move": (improved - before).norm(dim=-1).mean().item()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "flow": self.flow.state_dict(),
                "flow_optimizer": self.flow_optimizer.state_dict(),
                "memory": {k: torch.as_tensor(v) for k, v in self.memory.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.flow.load_state_dict(state["flow"])
        self.flow_optimizer.load_state_dict(state["flow_optimizer"])
        self.memory.load_state_dict({k: np.asarray(v.numpy()) for k, v in state["memory"].items()})
