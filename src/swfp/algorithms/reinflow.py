"""ReinFlow: PPO on the flow made stochastic by a learned noise injected at every Euler step
(Zhang et al., 2025, arXiv 2505.22094).

With noise ``σ_ψ(s, t_k)`` added after each of the K Euler steps,

    x_0 ~ N(0, I),   x_{k+1} = x_k + h·v_θ(s, x_k, t_k) + σ_ψ(s, t_k)·ξ_k,   a = x_K,

the chain is a Markov process whose every transition is Gaussian, so the log-probability of the
whole chain is exact and cheap (no Jacobians):

    log p(x_0:K | s) = log N(x_0; 0, I) + Σ_k log N(x_{k+1}; x_k + h·v_θ(s, x_k, t_k), σ_k² I),

and PPO treats the chain as the action (:func:`chain_log_prob`; ``tests/test_baselines.py`` checks
it against the per-step densities computed independently). Settings read from ReinFlow's public code
(``cfg/gym/finetune/hopper-v2/ft_ppo_reflow_mlp.yaml``, ``model/flow/mlp_flow.py``,
``model/flow/ft_ppo/ppoflow.py``): K = 4 denoising steps, noise network on ``[time embedding, s]``
(2×64, tanh) with its std bounded in [0.10, 0.24] through a tanh-squashed log-variance, the x_0 term
included, log-probabilities and entropy averaged over the (K+1)·D chain entries before the PPO ratio,
clip ratio 0.01, entropy coefficient 0.03, value coefficient 0.5, γ = 0.99 and GAE λ = 0.95 (theirs per
4-action chunk, ours per env step: a horizon about 4 times shorter), 5 epochs,
target KL 1.0, advantages normalised per minibatch, AdamW with actor lr 4.5e-5 and critic lr 6.5e-4
(weight decay 1e-5), running reward scaling, V(s) a 3×256 Mish MLP.

**Adapted to our budget and harness:** their Gym runs use 40 environments × 500 steps × 4-action
chunks (80k env steps) per PPO iteration for ~1000 iterations; here a PPO iteration takes
``rollout_steps`` = 2000 env steps (so a 200k-step run makes 100 iterations) in 4 minibatches per
epoch (their 4 × 5 = 20 gradient steps per iteration), with single actions (no chunks). Not
reproduced: the cosine learning-rate schedules, the late decay of the noise bound, the clamp of
intermediate Euler states to the box and of the normalised log-probabilities to [−1, 1]. A partial
rollout is not checkpointed: a resumed run starts a fresh rollout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from swfp.algorithms.base import FineTuner
from swfp.algorithms.network_policy import Actor, NetworkPolicy
from swfp.devices import to_device, to_host
from swfp.flow import FlowConfig, FlowPolicy, standard_normal_log_prob
from swfp.nets import Mish, SinusoidalTimeEmbedding, mlp


def minibatch_indices(size: int, count: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """A random permutation of ``range(size)`` on ``device`` split into ``count`` minibatches whose sizes differ by
    at most one: no leftover minibatch of a single row, whose advantage std (and then the weights) would be NaN."""
    return torch.randperm(size, device=device).tensor_split(min(count, size))


@dataclass
class ReinFlowConfig:
    denoising_steps: int = 4
    min_noise_std: float = 0.10
    max_noise_std: float = 0.24
    noise_hidden_dims: tuple[int, ...] = (64, 64)
    value_hidden_dims: tuple[int, ...] = (256, 256, 256)
    rollout_steps: int = 2_000       # env steps per PPO iteration, over all sub-environments
    update_epochs: int = 5
    minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_ratio: float = 0.01
    entropy_coef: float = 0.03
    value_coef: float = 0.5
    target_kl: float = 1.0
    actor_lr: float = 4.5e-5
    critic_lr: float = 6.5e-4
    critic_weight_decay: float = 1e-5
    reward_scaling: bool = True

    def __post_init__(self):
        self.noise_hidden_dims = tuple(self.noise_hidden_dims)
        self.value_hidden_dims = tuple(self.value_hidden_dims)
        if not 0 < self.min_noise_std <= self.max_noise_std:
            raise ValueError(f"need 0 < min_noise_std <= max_noise_std, got {self.min_noise_std}, {self.max_noise_std}")
        for name in ("denoising_steps", "rollout_steps", "update_epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1 and self.clip_ratio > 0):
            raise ValueError("need gamma in (0, 1], gae_lambda in [0, 1] and clip_ratio > 0")


class NoiseNet(nn.Module):
    """``σ_ψ(s, t)`` per action dimension, in ``[min_std, max_std]`` via a tanh-squashed log-variance."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: tuple[int, ...], min_std: float, max_std: float,
                 time_embed_dim: int = 16):
        super().__init__()
        self.settings = {"hidden_dims": list(hidden_dims), "min_std": min_std, "max_std": max_std,
                         "time_embed_dim": time_embed_dim}  # what rebuilds it (NoisyFlow.spec)
        self.time_embed = SinusoidalTimeEmbedding(time_embed_dim)
        self.net = mlp(obs_dim + time_embed_dim, hidden_dims, act_dim, activation=nn.Tanh)
        self.log_var_min, self.log_var_max = 2 * math.log(min_std), 2 * math.log(max_std)

    def forward(self, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        squashed = (torch.tanh(self.net(torch.cat([self.time_embed(t), obs], dim=-1))) + 1) / 2
        return torch.exp(0.5 * (self.log_var_min + (self.log_var_max - self.log_var_min) * squashed))


def _step_means_and_stds(flow: FlowPolicy, noise_net: NoiseNet, obs: torch.Tensor, x: torch.Tensor, k: int,
                         steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.full(x.shape[:1], k / steps, dtype=x.dtype, device=x.device)
    return x + flow.velocity(obs, x, t) / steps, noise_net(obs, t)


def _step_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(x_{k+1}; μ_k, diag σ_k²)`` ``(B,)``: one transition of the noisy chain."""
    return (-0.5 * ((x_next - mean) / std).pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def sample_chain(flow: FlowPolicy, noise_net: NoiseNet, obs: torch.Tensor, steps: int,
                 deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain ``x_0:K`` ``(B, K+1, D)`` and its ``log p(x_0:K | s)`` ``(B,)``, accumulated as it is drawn
    (the terms of :func:`chain_log_prob`, so collecting costs one pass of the velocity field, not two).
    ``deterministic``: ``x_0 = 0`` and no injected noise (the log-density is then of that chain)."""
    shape = (obs.shape[0], flow.act_dim)
    x = obs.new_zeros(shape) if deterministic else torch.randn(shape, dtype=obs.dtype, device=obs.device)
    chain, log_prob = [x], standard_normal_log_prob(x)
    for k in range(steps):
        mean, std = _step_means_and_stds(flow, noise_net, obs, x, k, steps)
        x = mean if deterministic else mean + std * torch.randn_like(mean)
        log_prob = log_prob + _step_log_prob(x, mean, std)
        chain.append(x)
    return torch.stack(chain, dim=1), log_prob


def chain_log_prob(flow: FlowPolicy, noise_net: NoiseNet, obs: torch.Tensor,
                   chain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``log p(x_0:K | s)`` ``(B,)`` of a stored chain (differentiable in θ and ψ), and the summed
    entropy of its Gaussian transitions ``Σ_k Σ_d ½ log(2πe σ_{k,d}²)`` ``(B,)``."""
    steps = chain.shape[1] - 1
    log_prob = standard_normal_log_prob(chain[:, 0])
    entropy = torch.zeros_like(log_prob)
    for k in range(steps):
        mean, std = _step_means_and_stds(flow, noise_net, obs, chain[:, k], k, steps)
        log_prob = log_prob + _step_log_prob(chain[:, k + 1], mean, std)
        entropy = entropy + (std.log() + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
    return log_prob, entropy


class NoisyFlow(Actor):
    """ReinFlow's policy: the fine-tuned flow's ``steps`` Euler steps with the learned noise injected after each
    (:func:`sample_chain`); its deterministic mode, as ReinFlow defines it, starts from ``x_0 = 0`` and injects
    no noise. Only the whole chain has an exact density; the action's marginalises the injected noise."""

    kind = "noisy-flow"
    no_density = ("ReinFlow's action marginalises the noise injected at every Euler step; only the density of "
                  "the whole chain x_0:K is exact (swfp.algorithms.reinflow.chain_log_prob)")

    def __init__(self, flow: FlowPolicy, noise_net: NoiseNet, steps: int):
        super().__init__()
        self.flow, self.noise_net, self.steps = flow, noise_net, steps

    def actions(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return sample_chain(self.flow, self.noise_net, obs, self.steps, deterministic)[0][:, -1]

    def spec(self) -> dict:
        return {"flow": asdict(self.flow.config), "noise_net": self.noise_net.settings, "denoising_steps": self.steps}

    @classmethod
    def from_spec(cls, obs_dim: int, act_dim: int, spec: dict) -> "NoisyFlow":
        noise = spec["noise_net"]
        return cls(FlowPolicy(obs_dim, act_dim, FlowConfig(**spec["flow"])),
                   NoiseNet(obs_dim, act_dim, tuple(noise["hidden_dims"]), noise["min_std"], noise["max_std"],
                            noise["time_embed_dim"]), int(spec["denoising_steps"]))


class RewardScaler:
    """Divide rewards by the running std of the discounted return (as DPPO/ReinFlow's RunningRewardScaler)."""

    def __init__(self, gamma: float):
        self.gamma = gamma
        self.returns: np.ndarray | None = None
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        if self.returns is None or len(self.returns) != len(rewards):
            self.returns = np.zeros(len(rewards))
        self.returns = self.returns * self.gamma + rewards
        for value in self.returns:  # Welford's running variance
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (value - self.mean)
        self.returns[dones] = 0.0
        std = math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0
        return rewards / max(std, 1e-8)

    def state_dict(self) -> dict:
        return {"count": int(self.count), "mean": float(self.mean), "m2": float(self.m2)}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


class ReinFlow(FineTuner):
    name = "reinflow"
    description = "ReinFlow: PPO on the flow with learned noise injected at each Euler step (exact chain log-prob)"
    config_class = ReinFlowConfig
    supports_chunks = False  # its PPO rollout and GAE are per environment step (the module docstring)

    def __init__(self, policy, demonstrations, config=None, total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        cfg = self.config
        obs_dim, act_dim = self.obs_dim, self.act_dim
        self.flow = policy.cascade.base.requires_grad_(True)
        self.noise_net = NoiseNet(obs_dim, act_dim, cfg.noise_hidden_dims, cfg.min_noise_std,
                                  cfg.max_noise_std).to(self.device)
        self.acting = NetworkPolicy.beside(NoisyFlow(self.flow, self.noise_net, cfg.denoising_steps), self.name,
                                           self._policy)
        self.value = mlp(obs_dim, cfg.value_hidden_dims, 1, activation=Mish).to(self.device)
        self.actor_optimizer = torch.optim.AdamW([*self.flow.parameters(), *self.noise_net.parameters()],
                                                 lr=cfg.actor_lr, weight_decay=0.0)
        self.critic_optimizer = torch.optim.AdamW(self.value.parameters(), lr=cfg.critic_lr,
                                                  weight_decay=cfg.critic_weight_decay)
        self.reward_scaler = RewardScaler(cfg.gamma)
        self.rollout: list[dict[str, torch.Tensor]] = []
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.iterations = 0

    # -- acting and collecting ---------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        obs_t = self._policy.normalize_obs(obs)
        chain, log_prob = sample_chain(self.flow, self.noise_net, obs_t, self.config.denoising_steps)
        self.pending = (obs_t, chain, log_prob)
        return to_host(chain[:, -1])

    def observe(self, obs, actions, rewards, next_obs, terminals, truncations=None, steps=None) -> None:
        dones = np.logical_or(terminals, truncations if truncations is not None else False)
        if self.config.reward_scaling:
            rewards = self.reward_scaler(np.asarray(rewards, np.float64), dones)
        obs_t, chain, log_prob = self.pending  # the rollout lives on the device: PPO reads all of it per iteration
        self.rollout.append({"obs": obs_t, "chain": chain, "log_prob": log_prob,
                             "reward": to_device(rewards, self.device),
                             "next_obs": self._policy.normalize_obs(next_obs),
                             "terminal": to_device(terminals, self.device),
                             "done": to_device(dones, self.device)})

    def train(self, env_step: int) -> dict[str, float]:
        """A PPO iteration whenever the rollout holds ``rollout_steps`` env steps."""
        self.env_step = env_step
        if sum(len(step["reward"]) for step in self.rollout) < self.config.rollout_steps:
            return {}
        with self.timed("update"):
            metrics = self.ppo_update({k: torch.stack([s[k] for s in self.rollout]) for k in self.rollout[0]})
        self.rollout = []
        self.iterations += 1
        return metrics

    # -- PPO ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def advantages(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the rollout ``(T, N)``; truncated episodes bootstrap from ``V`` of their true last state."""
        cfg = self.config
        values = self.value(data["obs"]).squeeze(-1)
        next_values = self.value(data["next_obs"]).squeeze(-1) * (1 - data["terminal"])
        deltas = data["reward"] + cfg.gamma * next_values - values
        advantages = torch.zeros_like(deltas)
        running = torch.zeros_like(deltas[0])
        for t in reversed(range(len(deltas))):
            running = deltas[t] + cfg.gamma * cfg.gae_lambda * (1 - data["done"][t]) * running
            advantages[t] = running
        return advantages, advantages + values

    def ppo_update(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        advantages, returns = self.advantages(data)
        flat = {k: v.flatten(0, 1) for k, v in data.items()}
        advantages, returns = advantages.flatten(), returns.flatten()
        entries = (cfg.denoising_steps + 1) * self.flow.act_dim  # log-probs averaged per chain entry
        metrics: dict[str, float] = {}
        for _ in range(cfg.update_epochs):
            for idx in minibatch_indices(len(returns), cfg.minibatches, self.device):
                log_prob, entropy = chain_log_prob(self.flow, self.noise_net, flat["obs"][idx], flat["chain"][idx])
                log_ratio = (log_prob - flat["log_prob"][idx]) / entries
                ratio = log_ratio.exp()
                adv = advantages[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio)).mean()
                value_loss = 0.5 * (self.value(flat["obs"][idx]).squeeze(-1) - returns[idx]).pow(2).mean()
                entropy_term = (entropy / entries).mean()
                loss = policy_loss - cfg.entropy_coef * entropy_term + cfg.value_coef * value_loss
                self.actor_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.actor_optimizer.step()
                self.critic_optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean().item()
                metrics = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                           "entropy": entropy_term.item(), "approx_kl": approx_kl,
                           "clip_fraction": ((ratio - 1).abs() > cfg.clip_ratio).float().mean().item()}
            if metrics["approx_kl"] > cfg.target_kl:
                break
        return metrics

    def status(self) -> dict[str, float]:
        return {**super().status(), "ppo_iterations": float(self.iterations)}

    # -- checkpointing (the partial rollout is dropped) ---------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "flow": self.flow.state_dict(), "noise_net": self.noise_net.state_dict(),
                "value": self.value.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "iterations": self.iterations,
                "reward_scaler": self.reward_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for name in ("flow", "noise_net", "value", "actor_optimizer", "critic_optimizer", "reward_scaler"):
            getattr(self, name).load_state_dict(state[name])
        self.iterations = state["iterations"]
        self.rollout, self.pending = [], None
