"""SWFP: online fine-tuning of a flow policy by a cascade of JKO flow blocks (arXiv 2510.15388).

Our reading of the method is DESIGN.md §2–3; the mathematics lives in :mod:`swfp.blocks`,
:mod:`swfp.cascade` and :mod:`swfp.live`, the loop in :mod:`swfp.runner`. This file is what is
specific to SWFP. Each policy-improvement step is one JKO step of the entropic functional
``F_s(π) = E_π[−Q̃] + α·E_π[log π]``, taken as a block ``T = id + τ·u_φ`` appended to the frozen chain
``π_n`` and trained on equation (1) of :mod:`swfp.blocks` plus a box term.

**Schedule** (``schedule``; DESIGN.md §3 gives the measurements behind v2):

* ``"live"`` (default) — the newest block takes one Adam step per critic update on prefix actions
  ``a ~ π_n`` from a pool of recently acted states (:class:`~swfp.live.PrefixPool`: O(1) in the chain's
  length); acting and the critic's targets use ``π_n ∘ L``, so the critic values the policy being
  improved. Every S env steps the block is judged, then frozen and appended or discarded, and a
  fresh zero block starts.
* ``"batched"`` — the first schedule, kept as the ablation it now is: the policy is ``π_n`` between
  blocks, and at every S env steps a new block is trained for J steps on the same pool, then judged.

S = ``min(block_every, total / blocks_per_run)`` (every 2000 env steps, and at least 20 blocks in a run
of any length).

**The value a block climbs.** ``Q̃ = (mean_i Q_i − c·std_i Q_i) / scale`` over the critic members
``0 … objective_members − 1`` (c = ``q_pessimism``; with two members c = 1 is their min). The
scale puts τ in action units: ``q_scale="gradient"`` divides by ``E‖∇_a Q‖`` so the linearised JKO
minimiser ``T(a) ≈ a + τ·∇_a Q/scale`` moves actions by ≈ τ; it is an exponential average over updates
(rate ``q_scale_rate``) on the live pool, not re-measured per block, so one noisy measurement does not
rescale a whole block. ``"value"`` divides by ``E|Q|`` (TD3+BC/FQL), ``"none"`` uses raw Q.

**Step size.** ``tau_radius`` δ adapts τ after each accepted block so the measured W₂ move stays near δ
(:func:`~swfp.blocks.adapt_tau`); a rejected block halves τ.

**Entropy.** α is tuned toward ``target_entropy`` (default ``−dim(A)``, SAC's) with SAC's temperature
loss (:class:`~swfp.live.Temperature`), fed the cascade's entropy tracked exactly and incrementally:
``H(π_{n+1}) = H(π_n) + E log|det ∂T|`` for every accepted block (``H(π_n ∘ L)`` the same way between
freezes), anchored by one exact K-Jacobian estimate when the live updates start and at each
compaction. α acts on normalised Q inside the blocks; the critic target's entropy term
(``critic_entropy="exact"``) uses ``α·scale``, the same temperature in raw-Q units.

**A gate that can fail.** A block is judged on evidence it was not trained on: (1) ΔF measured on
fresh held-out ``(s, a ~ π_n)`` pairs with the critic members the block never climbed (members
``objective_members …``), which must be negative; the map must be finite and invertible; (2) the
held-out TD error (the ``td_heldout`` most recent transitions, targets from the candidate policy)
must not jump above ``td_jump`` × its running reference; (3) the Q scale must not have moved by more
than ``q_scale_jump``× since the previous judgement. A rejected block leaves ``π_n`` bit for bit.

**Critic.** Three LayerNorm members, target min over a random pair (REDQ/RLPD), trained on the 50/50
mixture of demonstrations and online data with targets from the acting policy. Block states are
online only: the pool holds acted states.

**Compaction.** At ``max_blocks`` accepted blocks the cascade is distilled into a new base flow
(:func:`~swfp.cascade.compact`), so inference stays at K Euler steps; the return just before and just
after is measured on the evaluation seeds and logged.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from swfp.algorithms.base import OffPolicyConfig, OffPolicyLearner
from swfp.blocks import BlockConfig, JKOBlock, adapt_tau, measure_block, proximal_fraction, train_block
from swfp.buffer import Batch
from swfp.cascade import Cascade, compact, draw_pool
from swfp.critic import CriticConfig
from swfp.data import Dataset
from swfp.devices import generator, to_host
from swfp.live import LiveBlock, PrefixPool, Temperature
from swfp.policy import Policy
from swfp.runner import RunConfig, evaluate_policy

SCHEDULES = ("live", "batched")
SCALE_EVERY = 10  # updates between measurements of the Q scale (an average over thousands of updates)
CRITIC_ENTROPY = ("none", "exact")
Q_SCALES = ("gradient", "value", "none")


def swfp_critic() -> CriticConfig:
    """Three LayerNorm members, target min over a random pair (REDQ): two members for the block's objective,
    one held out for its judgement. LayerNorm keeps Q bounded when large steps change the target policy;
    a third member costs 1.7× a pair's update (5.6 → 9.6 ms at batch 256 on one core), a fourth 2.1×."""
    return CriticConfig(ensemble_size=3, target_subset=2, layer_norm=True)


@dataclass
class SWFPConfig(OffPolicyConfig):
    """SWFP's hyper-parameters (README "SWFP" explains each); the shared replay/critic fields come first."""

    critic: CriticConfig = field(default_factory=swfp_critic)
    # schedule
    schedule: str = "live"               # "live" (v2) or "batched" (the first schedule, an ablation)
    block_every: int | None = 2_000      # S at most this (None: no cap, S = total_env_steps / blocks_per_run)
    blocks_per_run: int = 20             # at least this many blocks in a run: S <= total_env_steps / blocks_per_run
    max_blocks: int = 8                  # N_max, then compaction
    compaction_steps: int = 2_000
    # the JKO step
    tau: float = 0.1                     # τ, the initial JKO step (with q_scale="gradient": action move per block)
    tau_radius: float | None = 0.1       # δ: adapt τ toward this W₂ per block (None: fixed τ)
    alpha: float = 0.01                  # α, the entropic temperature (initial value if tuned)
    tune_alpha: bool = True              # tune α toward target_entropy (False: fixed α)
    target_entropy: float | None = None  # None: −dim(A)
    alpha_lr: float = 3e-4
    objective: str = "jko"               # or the Jacobian-free ablation "langevin_fm" (batched schedule only)
    box_weight: float = 10.0             # λ: (λ/2)·‖T(a) − clip(T(a))‖² pulls out-of-box components back
    block_hidden_dims: tuple[int, ...] = (128, 128)
    block_sub_steps: int = 1
    block_lr: float = 1e-3
    block_batch_size: int = 256
    block_grad_steps: int = 500          # J, the batched schedule's steps per block
    pool_size: int = 10_000              # acted states whose prefix actions the blocks train on
    heldout_states: int = 1024           # fresh online states a block is judged on
    # the value a block climbs
    q_scale: str = "gradient"            # "gradient" (τ in action units), "value" or "none"
    q_scale_rate: float = 1e-3           # the scale's exponential-average rate per update (measured every 10)
    q_pessimism: float = 1.0             # c in mean − c·std over the objective's members
    objective_members: int | None = 2    # critic members the block climbs; the others judge it (None: all)
    # the gate
    td_jump: float | None = 4.0          # reject when the held-out TD error exceeds this × its reference
    q_scale_jump: float | None = 4.0     # reject when the Q scale moved by more than this factor
    td_heldout: int = 1_000              # most recent transitions of the TD check
    proximal_check_every: int | None = None  # every this many judged blocks, measure the proximal fraction
    critic_entropy: str = "none"         # the critic target's entropy term: "none" or "exact"

    def __post_init__(self):
        super().__post_init__()
        self.block_hidden_dims = tuple(self.block_hidden_dims)
        self.block_config()  # validates the block fields
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES), ("q_scale", self.q_scale, Q_SCALES),
                                     ("critic_entropy", self.critic_entropy, CRITIC_ENTROPY)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.schedule == "live" and self.objective != "jko":
            raise ValueError("the live schedule trains the JKO objective; objective='langevin_fm' needs "
                             "schedule='batched'")
        for name in ("blocks_per_run", "max_blocks", "heldout_states", "pool_size", "td_heldout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.block_every is not None and self.block_every < 1:
            raise ValueError(f"block_every must be >= 1, got {self.block_every}")
        if self.compaction_steps < 0:
            raise ValueError("compaction_steps must be >= 0")
        if self.proximal_check_every is not None and self.proximal_check_every < 1:
            raise ValueError(f"proximal_check_every must be >= 1 (or null), got {self.proximal_check_every}")
        for name in ("tau_radius", "td_jump", "q_scale_jump"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (or null to turn it off), got {value}")
        if not 0 < self.q_scale_rate <= 1 or self.q_pessimism < 0 or self.alpha_lr <= 0:
            raise ValueError("need 0 < q_scale_rate <= 1, q_pessimism >= 0 and alpha_lr > 0")
        members = self.objective_members
        if members is not None and not 1 <= members <= self.critic.ensemble_size:
            raise ValueError(f"objective_members must be in [1, critic.ensemble_size={self.critic.ensemble_size}] "
                             f"(or null for all), got {members}")
        if self.tune_alpha and not self.alpha > 0:
            raise ValueError(f"a tuned alpha must start > 0, got {self.alpha}")

    def block_config(self, tau: float | None = None, alpha: float | None = None) -> BlockConfig:
        return BlockConfig(hidden_dims=self.block_hidden_dims, sub_steps=self.block_sub_steps,
                           tau=self.tau if tau is None else tau, alpha=self.alpha if alpha is None else alpha,
                           lr=self.block_lr, grad_steps=self.block_grad_steps, batch_size=self.block_batch_size,
                           pool_size=self.pool_size, objective=self.objective, box_weight=self.box_weight)


class SWFP(OffPolicyLearner):
    """The SWFP learner (a :class:`swfp.runner.Learner`) and its user API.

    >>> agent = SWFP.from_pretrained("runs/hopper-bc", config=SWFPConfig(tau_radius=0.1))
    >>> agent.learn(total_env_steps=200_000, out="runs/hopper-swfp")
    >>> agent.save("runs/hopper-swfp")
    """

    name = "swfp"
    description = "Stepwise Flow Policy: a live JKO block on the frozen chain, judged on held-out critics, then appended"
    config_class = SWFPConfig

    def __init__(self, policy: Policy, demonstrations: Dataset | None, config: SWFPConfig | None = None,
                 total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        cfg = self.config
        members = cfg.critic.ensemble_size if cfg.objective_members is None else cfg.objective_members
        self.objective_members = slice(0, members)
        self.judge_members = slice(members, None) if members < cfg.critic.ensemble_size else slice(None)
        self.tau = cfg.tau
        self.target_entropy = -float(self.act_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.temperature = Temperature(cfg.alpha, self.target_entropy if cfg.tune_alpha else None, cfg.alpha_lr)
        self.q_scale: float | None = None            # exponential average, set by the first live update
        self.block_updates = 0
        self.entropy: float | None = None            # H(π_n), tracked block by block
        self.td_reference: float | None = None       # running held-out TD error of the judged blocks
        self.scale_reference: float | None = None    # the Q scale at the previous judgement
        self.pool = PrefixPool(self.obs_dim, self.act_dim, cfg.pool_size, self.device)
        self.live = self.new_live_block() if cfg.schedule == "live" else None
        self.counts = {"accepted": 0, "rejected": 0, "compactions": 0}
        self.last_block: dict[str, float] = {}
        self.evaluate_return: Callable[[Policy], float] | None = None  # set by prepare() for compaction checks

    def prepare(self, run_config: RunConfig) -> None:
        self.evaluate_return = lambda policy: evaluate_policy(policy, run_config, deterministic_too=False)["return_mean"]

    def derived_config(self) -> dict:
        return {"block_every": self.block_every, "target_entropy": self.target_entropy}

    @property
    def block_every(self) -> int:
        """S, environment steps between blocks: ``min(block_every, total / blocks_per_run)``."""
        at_least = max(self.total_env_steps // self.config.blocks_per_run, 1)
        return at_least if self.config.block_every is None else min(self.config.block_every, at_least)

    @property
    def alpha(self) -> float:
        return self.temperature.alpha

    def new_live_block(self) -> LiveBlock:
        return LiveBlock(self.obs_dim, self.act_dim, self.config.block_config(self.tau, self.alpha), self.device)

    # -- the values a block climbs and is judged by ----------------------------------------------
    def objective_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``Q̃``: the pessimistic value of the objective's members, in units of the Q scale."""
        value = self.critic.value(obs, actions, members=self.objective_members, pessimism=self.config.q_pessimism)
        return value / self.q_scale

    def judge_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The held-out members' mean value, same units: evidence the block was not trained on."""
        return self.critic.value(obs, actions, members=self.judge_members) / self.q_scale

    def measure_q_scale(self, obs: torch.Tensor, actions: torch.Tensor) -> float:
        """``E‖∇_a Q‖`` (``"gradient"``) or ``E|Q|`` (``"value"``) of the objective's value at ``(obs, actions)``."""
        if self.config.q_scale == "none":
            return 1.0
        actions = actions.detach().requires_grad_(self.config.q_scale == "gradient")
        with torch.enable_grad():
            q = self.critic.value(obs, actions, members=self.objective_members, pessimism=self.config.q_pessimism)
            if self.config.q_scale == "value":
                return max(q.abs().mean().item(), 1e-6)
            grad, = torch.autograd.grad(q.sum(), actions)
        return max(grad.norm(dim=-1).mean().item(), 1e-6)

    @torch.no_grad()
    def exact_entropy(self, states: torch.Tensor, samples: int = 1024) -> float:
        """``H(π_n) ≈ −E log π_n(a|s)`` from the cascade's exact K-step density, one action for each of ``samples``
        states drawn from ``states`` (−log π of a single action varies by ~√(d/2) nats: 1024 samples keep the
        anchor's error near 0.03 nats for d = 2)."""
        states = states[torch.as_tensor(self.rng.integers(len(states), size=samples), device=self.device)]
        return -self._policy.cascade.sample(states, with_log_prob=True)[1].mean().item()

    # -- acting, and the critic's targets: π_n ∘ L ------------------------------------------------
    @torch.no_grad()
    def act(self, obs):
        states = self._policy.normalize_obs(obs)
        prefix = self._policy.cascade.sample(states)[0]
        self.pool.add(states, prefix)
        return to_host(prefix if self.live is None else self.live.block(states, prefix))

    def target_actions(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        exact = self.config.critic_entropy == "exact"
        actions, log_prob = self._policy.cascade.sample(next_obs, with_log_prob=exact)
        if self.live is None:
            return actions, log_prob
        if not exact:
            return self.live.block(next_obs, actions), None
        moved, log_det = self.live.block.forward_log_det(next_obs, actions)
        return moved, log_prob - log_det

    def critic_alpha(self) -> float:
        """α in raw-Q units for the critic target's entropy term: the blocks' α is per unit of ``Q/scale``."""
        return self.alpha * (self.q_scale or 1.0)

    def policy(self) -> Policy:
        """The acting policy ``π_n ∘ L`` (a snapshot: the live block copied and frozen), or ``π_n`` when batched."""
        if self.live is None:
            return self._policy
        p = self._policy
        return Policy(Cascade(p.cascade.base, [*p.cascade.blocks, copy.deepcopy(self.live.block)]), p.task_id,
                      p.obs_mean, p.obs_std, p.action_low, p.action_high, p.action_chunk, self.device)

    # -- the shared off-policy core's hooks -----------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step, then (once the pool holds a batch) one step of the live block and of α."""
        metrics = self.td_update(batch, self.critic_alpha())
        if len(self.pool) < self.config.block_batch_size:
            return metrics
        with self.timed("block"):
            metrics.update(self.block_update())
        return metrics

    def block_update(self) -> dict[str, float]:
        cfg = self.config
        obs, prefix = self.pool.sample(cfg.block_batch_size, self.rng)
        if self.q_scale is None or self.block_updates % SCALE_EVERY == 0:
            scale = self.measure_q_scale(obs, prefix)
            rate = min(1.0, SCALE_EVERY * cfg.q_scale_rate)
            self.q_scale = scale if self.q_scale is None else self.q_scale + rate * (scale - self.q_scale)
        self.block_updates += 1
        if self.entropy is None:
            self.entropy = self.exact_entropy(self.pool.obs[: len(self.pool)])
        metrics = {"q_scale": self.q_scale, "alpha": self.alpha}
        entropy = self.entropy
        if self.live is not None:
            metrics.update(self.live.step(obs, prefix, self.objective_q, self.alpha))
            entropy += metrics["live_log_det"]
        self.temperature.update(entropy)
        return {**metrics, "entropy": entropy}

    def after_updates(self, previous_step: int, env_step: int) -> dict[str, float]:
        """A block is judged whenever ``env_step`` crosses a multiple of S (once the live updates started)."""
        if env_step // self.block_every > previous_step // self.block_every and self.q_scale is not None:
            with self.timed("block"):
                return self.improve()
        return {}

    def improve(self) -> dict[str, float]:
        """One SWFP refinement step: the candidate block (the live one, or one trained now) is judged, appended
        if accepted; τ adapts; at ``max_blocks`` the cascade is compacted; a fresh live block starts."""
        cfg, cascade = self.config, self._policy.cascade
        start = time.perf_counter()
        if self.live is not None:
            candidate, block = self.live.block, {}
        else:
            candidate = JKOBlock(self.obs_dim, self.act_dim, cfg.block_config(self.tau, self.alpha)).to(self.device)
            size = len(self.pool)
            block = train_block(candidate, self.pool.obs[:size], self.pool.prefix[:size], self.objective_q,
                                cfg.block_config(self.tau, self.alpha),
                                generator(self.device, int(self.rng.integers(2**31))))
        states = self._policy.normalize_obs(self.replay.online.sample(cfg.heldout_states, self.rng).observations)
        heldout = draw_pool(cascade, states)  # fresh states, fresh actions of π_n
        block.update(self.judge(candidate, *heldout))
        judged = self.counts["accepted"] + self.counts["rejected"]
        if cfg.proximal_check_every and judged % cfg.proximal_check_every == 0:
            size = len(self.pool)
            with torch.random.fork_rng():  # a diagnostic: the run's own random streams are left as they were
                block["proximal_fraction"] = proximal_fraction(
                    candidate, self.pool.obs[:size], self.pool.prefix[:size], *heldout, self.objective_q, self.alpha,
                    generator=generator(self.device, judged))
        if block["accepted"]:
            cascade.append(candidate)
            self.entropy += block["entropy_change"]
            if cfg.tau_radius is not None:
                self.tau = adapt_tau(self.tau, block["w2_upper"], cfg.tau_radius)
        else:
            self.tau *= 0.5
        self.counts["accepted" if block["accepted"] else "rejected"] += 1
        block.update(tau=self.tau, alpha=self.alpha, q_scale=self.q_scale, entropy=self.entropy)
        if cascade.num_blocks >= cfg.max_blocks:
            block.update(self.compact())
        if self.live is not None:
            self.live = self.new_live_block()
        if block["accepted"]:
            self.pool.redraw(self._policy.cascade)  # π_n changed: the prefix actions follow it
        block["seconds"] = time.perf_counter() - start
        self.last_block = {k: float(v) for k, v in block.items()}
        self.record("blocks", self.last_block)  # every judged block is a row of blocks.csv
        return {f"block_{k}": v for k, v in self.last_block.items()}

    def judge(self, candidate: JKOBlock, obs: torch.Tensor, prefix: torch.Tensor) -> dict[str, float | bool]:
        """The gate (module docstring) on held-out ``(obs, prefix ~ π_n)``: the held-out members' ΔF, the held-out
        TD error, the Q-scale jump.

        Also measures the block on the objective's own members, the trust-region certificate of the
        objective it minimised (``w2_upper ≤ trust_bound``; :func:`~swfp.blocks.measure_block`)."""
        cfg = self.config
        trust = measure_block(candidate, obs, prefix, self.objective_q, self.alpha)
        held_out = measure_block(candidate, obs, prefix, self.judge_q, self.alpha)
        td_error = self.heldout_td_error(candidate)
        td_ratio = td_error / self.td_reference if self.td_reference else 1.0
        scale_ratio = self.q_scale / self.scale_reference if self.scale_reference else 1.0
        checks = {"gate_free_energy": held_out["accepted"],
                  "gate_td": cfg.td_jump is None or td_ratio <= cfg.td_jump,
                  "gate_q_scale": cfg.q_scale_jump is None or max(scale_ratio, 1 / scale_ratio) <= cfg.q_scale_jump}
        self.td_reference = td_error if not self.td_reference else math.sqrt(self.td_reference * td_error)
        self.scale_reference = self.q_scale
        return {**{k: v for k, v in trust.items() if k != "accepted"}, **checks,
                "heldout_delta_free_energy": held_out["delta_free_energy"], "heldout_td_error": td_error,
                "td_ratio": td_ratio, "q_scale_ratio": scale_ratio, "accepted": all(checks.values())}

    @torch.no_grad()
    def heldout_td_error(self, candidate: JKOBlock) -> float:
        """Mean squared TD error on the most recent online transitions, targets from ``π_n ∘ candidate``."""
        batch = self.replay.online.recent(self.config.td_heldout).to(self.device)
        norm = self._policy.normalize_obs
        obs, next_obs = norm(batch.observations), norm(batch.next_observations)
        next_actions = candidate(next_obs, self._policy.cascade.sample(next_obs)[0])
        target = self.critic.td_target(Batch(obs, batch.actions, batch.rewards, next_obs, batch.terminals, batch.steps), next_actions)
        return (self.critic.q(obs, batch.actions) - target).pow(2).mean().item()

    def compact(self) -> dict[str, float]:
        """Distil the cascade into a new base flow; measure the return just before and after; re-anchor H exactly."""
        before = self.evaluate_return(self._policy) if self.evaluate_return else float("nan")
        new_base = compact(self._policy.cascade, self.sample_states(4096), self.config.compaction_steps,
                           generator=generator(self.device, int(self.rng.integers(2**31))))
        self._policy.cascade = Cascade(new_base)
        after = self.evaluate_return(self._policy) if self.evaluate_return else float("nan")
        self.entropy = self.exact_entropy(self.pool.obs[: len(self.pool)])
        self.counts["compactions"] += 1
        return {"return_before_compaction": before, "return_after_compaction": after, "entropy": self.entropy}

    def sample_states(self, n: int) -> torch.Tensor:
        """States for compaction: online ones once there are any (block states are online only)."""
        source = self.replay.online if len(self.replay.online) else self.replay
        return self._policy.normalize_obs(source.sample(n, self.rng).observations)

    def status(self) -> dict[str, float]:
        keep = ("delta_free_energy", "heldout_delta_free_energy", "transport_cost", "w2_upper", "trust_bound")
        return {"blocks": float(self._policy.cascade.num_blocks),
                **{f"blocks_{k}": float(v) for k, v in self.counts.items()}, "tau": self.tau, "alpha": self.alpha,
                "entropy": math.nan if self.entropy is None else self.entropy, **super().status(),
                **{k: self.last_block[k] for k in keep if k in self.last_block}}

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        cascade = self._policy.cascade
        return {**super().state_dict(), "base": cascade.base.state_dict(),
                "blocks": [{"config": json_config(b.config), "weights": b.state_dict()} for b in cascade.blocks],
                "live": None if self.live is None else {"config": json_config(self.live.config),
                                                        **self.live.state_dict()},
                "pool": self.pool.state_dict(), "temperature": self.temperature.state_dict(),
                "tau": self.tau, "q_scale": self.q_scale, "block_updates": self.block_updates, "entropy": self.entropy, "td_reference": self.td_reference,
                "scale_reference": self.scale_reference, "counts": dict(self.counts),
                "last_block": dict(self.last_block)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        base = self._policy.cascade.base
        base.load_state_dict(state["base"])
        blocks = []
        for entry in state["blocks"]:
            block = JKOBlock(base.obs_dim, base.act_dim, BlockConfig(**entry["config"])).to(self.device)
            block.load_state_dict(entry["weights"])
            blocks.append(block)
        self._policy.cascade = Cascade(base, blocks)
        if state["live"] is not None:
            self.live = LiveBlock(self.obs_dim, self.act_dim, BlockConfig(**state["live"]["config"]), self.device)
            self.live.load_state_dict(state["live"])
        self.pool.load_state_dict(state["pool"])
        self.temperature.load_state_dict(state["temperature"])
        for name in ("tau", "q_scale", "entropy", "td_reference", "scale_reference", "block_updates"):
            setattr(self, name, state[name])
        self.counts, self.last_block = dict(state["counts"]), dict(state["last_block"])


def json_config(config) -> dict:
    """A dataclass config as plain JSON types (tuples become lists), storable in a weights-only checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
