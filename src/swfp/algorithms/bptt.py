"""Full-chain Q fine-tuning (``bptt``): the actor loss back-propagated through all K Euler steps.

"Standard RL on an iterative-inference policy" (DESIGN.md §4): the flow's action
``a_θ(s, x0) = T_{K−1} ∘ … ∘ T_0(x0)`` is differentiated end to end, as Diffusion-QL (Wang et al.,
2022, arXiv 2208.06193) does through its denoising chain and FQL's "flow BC + Q" baseline through
the Euler steps. The loss, per batch of the mixed replay,

    L(θ) = E‖v_θ(s, x_t, t) − (a − x0)‖²  −  η · E[Q(s, a_θ(s, x0))] / stop_grad(E|Q|),

is the flow-matching (BC) loss on the replay's actions plus the Q term normalised by its mean
magnitude, Diffusion-QL's ``bc_loss + eta·q_loss`` (read from ``agents/ql_diffusion.py`` of
``Zhendong-Wang/Diffusion-Policies-for-Offline-RL``: η = 1 for Hopper/Walker2d medium,
normalisation by the mean |Q|, gradient-norm clip 1 for Walker2d (9 for Hopper), 3×256 Mish
networks). Its time and memory per update grow linearly with K (the whole chain's graph is kept
for the backward pass) — what ``tests/test_baselines.py`` checks and ``swfp bench compute`` measures.

Our settings: η = 1, gradient clip 1, actor learning rate 1e-4 (theirs is 3e-4 from scratch; we
fine-tune a pre-trained flow), one actor step per critic step, the action clipped to the box before
Q (as the environment clips it). Differences: no EMA actor for the critic's target actions (the
current flow's samples, as every method here), and the critic is the harness's clipped double Q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swfp.algorithms.base import OffPolicyConfig, OffPolicyLearner, optimizer_step
from swfp.buffer import Batch


@dataclass
class BPTTConfig(OffPolicyConfig):
    actor_lr: float = 1e-4
    q_weight: float = 1.0        # η
    bc_weight: float = 1.0       # weight of the flow-matching loss on the replay's actions
    grad_clip: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not (self.actor_lr > 0 and self.q_weight >= 0 and self.bc_weight >= 0 and self.grad_clip > 0):
            raise ValueError("need actor_lr > 0, q_weight >= 0, bc_weight >= 0 and grad_clip > 0")


def q_loss(q: torch.Tensor) -> torch.Tensor:
    """``−E[Q] / stop_grad(E|Q|)``: the Q term at a scale-free magnitude (Diffusion-QL, TD3+BC, FQL)."""
    return -q.mean() / q.abs().mean().detach().clamp_min(1e-6)


class BPTT(OffPolicyLearner):
    name = "bptt"
    description = "full-chain Q fine-tuning: -Q back-propagated through all K Euler steps + flow-matching BC"
    config_class = BPTTConfig

    def __init__(self, policy, demonstrations, config=None, total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        self.flow = policy.cascade.base.requires_grad_(True)
        self.actor_optimizer = torch.optim.Adam(self.flow.parameters(), lr=self.config.actor_lr)

    def target_actions(self, next_obs):
        return self.flow.sample(next_obs)[0], None

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The BC + normalised-Q loss, with the action differentiated through the whole chain."""
        obs = batch.observations
        bc = self.flow.flow_matching_loss(obs, batch.actions)
        q_term = q_loss(self.critic.value(obs, self.flow.sample(obs)[0]))  # the critic clips to the box
        return self.config.bc_weight * bc + self.config.q_weight * q_term, {"bc_loss": bc.item(),
                                                                            "q_loss": q_term.item()}

    def actor_update(self, batch: Batch) -> dict[str, float]:
        """One clipped Adam step of the flow on :meth:`actor_loss` (what ``swfp bench compute`` times against K)."""
        loss, metrics = self.actor_loss(batch)
        optimizer_step(self.actor_optimizer, loss, self.config.grad_clip)
        return metrics

    def update(self, batch: Batch) -> dict[str, float]:
        return {**self.td_update(batch), **self.actor_update(batch)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "flow": self.flow.state_dict(), "actor_optimizer":
                self.actor_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.flow.load_state_dict(state["flow"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
