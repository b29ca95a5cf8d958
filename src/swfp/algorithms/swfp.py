"""SWFP: online fine-tuning of a flow policy by a cascade of JKO flow blocks (arXiv 2510.15388).

Our reading of the method is DESIGN.md §2–3; the mathematics lives in :mod:`swfp.blocks` and
:mod:`swfp.cascade`, the loop in :mod:`swfp.runner`. This file is what is specific to SWFP:

* **Critic.** Clipped double Q on the mixture of demonstrations and online data
  (:class:`~swfp.buffer.MixedReplay`, 50/50 by default), target actions ``a' ~ π_n(·|s')`` from
  the current cascade. The entropy term in the target is ``critic_entropy="none"`` by default
  (SWFP's entropic regularisation already acts inside each block's objective, and the exact
  log-density costs K Jacobians per target sample) or ``"exact"``.
* **Critic warm-up.** ``critic_warmup_steps`` TD steps on the demonstrations before the first
  environment step, so the first block is not trained against a random critic.
* **Policy improvement.** Every S environment steps, ``S = min(block_every, total / blocks_per_run)``
  (a block every 5000 steps, and at least 20 blocks in a run of any length), block n+1 is trained for
  J steps on a pool of ``(s, a ~ π_n)`` pairs drawn once from the replay's states, then measured on
  held-out states (fresh states and fresh actions) and appended only if its free energy went down
  (ΔF < 0, everything finite, the map invertible); a rejected block leaves ``π_n`` unchanged.
* **Q scale.** Locomotion returns put Q in the hundreds and its action-gradient anywhere from 1
  to 100, so a fixed τ would mean a different move on every task and every block. The block
  objective uses ``Q / scale`` with the scale measured under ``π_n`` on the held-out states
  (``q_scale``): ``"gradient"`` (default) divides by the mean action-gradient norm
  ``E‖∇_a Q(s, a)‖``, so the linearised JKO minimiser ``T(a) ≈ a + τ·∇_a Q/scale`` moves actions by
  ≈ τ on average and **τ is the per-block step in normalised action units**; ``"value"`` divides by
  ``E|Q|`` (TD3+BC/FQL's normalisation; measured on Hopper it made τ = 0.1 move actions by only
  ≈ 0.005 per block); ``"none"`` uses Q as it is.
* **τ and α.** Fixed by default; ``tau_radius`` adapts τ after each block so the measured W₂ move
  stays near that radius (:func:`~swfp.blocks.adapt_tau`); ``target_entropy`` tunes α toward that
  entropy of the cascade (exact log-density on held-out states) with a step ``alpha_lr`` on log α.
* **Compaction.** At ``max_blocks`` accepted blocks the cascade is distilled into a new base flow
  (:func:`~swfp.cascade.compact`) so inference stays at K Euler steps; the return of the policy
  just before and just after is measured on the evaluation seeds and logged.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from swfp.algorithms.base import OffPolicyConfig, OffPolicyLearner
from swfp.blocks import BlockConfig, JKOBlock, adapt_tau
from swfp.buffer import Batch
from swfp.cascade import Cascade, compact, refine
from swfp.data import Dataset
from swfp.policy import Policy
from swfp.runner import RunConfig, evaluate_policy

CRITIC_ENTROPY = ("none", "exact")
Q_SCALES = ("gradient", "value", "none")


@dataclass
class SWFPConfig(OffPolicyConfig):
    """SWFP's hyper-parameters (README "SWFP" explains each); the shared replay/critic fields come first."""

    # JKO step
    tau: float = 0.03                    # τ, the JKO step size (with q_scale="gradient": mean action move per block)
    alpha: float = 0.01                  # α, the entropic temperature (initial value if tuned)
    objective: str = "jko"               # or the Jacobian-free ablation "langevin_fm"
    block_hidden_dims: tuple[int, ...] = (64, 64)
    block_sub_steps: int = 1
    block_grad_steps: int = 500          # J
    block_lr: float = 3e-4
    block_batch_size: int = 256
    pool_size: int = 8192
    heldout_states: int = 1024
    q_scale: str = "gradient"            # "gradient" (τ in action units), "value" or "none"
    q_reduce: str = "mean"               # how the block objective reduces the critic ensemble
    # schedule
    blocks_per_run: int = 20             # at least this many blocks in a run: S <= total_env_steps / blocks_per_run
    block_every: int | None = 5_000      # S at most this (None: no cap, S = total_env_steps / blocks_per_run)
    max_blocks: int = 8                  # N_max, then compaction
    compaction_steps: int = 2_000
    tau_radius: float | None = None      # adapt τ toward this per-block W₂ (None: fixed τ)
    target_entropy: float | None = None  # tune α toward this entropy (None: fixed α)
    alpha_lr: float = 0.1
    critic_entropy: str = "none"         # the critic target's entropy term: "none" or "exact"

    def __post_init__(self):
        super().__post_init__()
        self.block_hidden_dims = tuple(self.block_hidden_dims)
        self.block_config()  # validates the block fields
        if self.critic_entropy not in CRITIC_ENTROPY:
            raise ValueError(f"critic_entropy must be one of {CRITIC_ENTROPY}, got {self.critic_entropy!r}")
        if self.q_scale not in Q_SCALES:
            raise ValueError(f"q_scale must be one of {Q_SCALES}, got {self.q_scale!r}")
        if self.q_reduce not in ("mean", "min"):
            raise ValueError(f"q_reduce must be 'mean' or 'min', got {self.q_reduce!r}")
        for name in ("blocks_per_run", "max_blocks", "heldout_states"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.block_every is not None and self.block_every < 1:
            raise ValueError(f"block_every must be >= 1, got {self.block_every}")
        if self.compaction_steps < 0:
            raise ValueError("compaction_steps must be >= 0")
        if self.tau_radius is not None and self.tau_radius <= 0:
            raise ValueError(f"tau_radius must be > 0, got {self.tau_radius}")

    def block_config(self, tau: float | None = None, alpha: float | None = None) -> BlockConfig:
        return BlockConfig(hidden_dims=self.block_hidden_dims, sub_steps=self.block_sub_steps,
                           tau=self.tau if tau is None else tau, alpha=self.alpha if alpha is None else alpha,
                           lr=self.block_lr, grad_steps=self.block_grad_steps, batch_size=self.block_batch_size,
                           pool_size=self.pool_size, objective=self.objective)


class SWFP(OffPolicyLearner):
    """The SWFP learner (a :class:`swfp.runner.Learner`) and its user API.

    >>> agent = SWFP.from_pretrained("runs/hopper-bc", config=SWFPConfig(tau=0.1, alpha=0.01))
    >>> agent.learn(total_env_steps=300_000, out="runs/hopper-swfp")
    >>> agent.save("runs/hopper-swfp")
    """

    name = "swfp"
    description = "Stepwise Flow Policy: JKO flow blocks appended to the frozen chain, trust region measured"
    config_class = SWFPConfig

    def __init__(self, policy: Policy, demonstrations: Dataset | None, config: SWFPConfig | None = None,
                 total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        self.tau, self.alpha = self.config.tau, self.config.alpha
        self.counts = {"accepted": 0, "rejected": 0, "compactions": 0}
        self.last_block: dict[str, float] = {}
        self.evaluate_return: Callable[[Policy], float] | None = None  # set by prepare() for compaction checks

    def prepare(self, run_config: RunConfig) -> None:
        self.evaluate_return = lambda policy: evaluate_policy(policy, run_config, deterministic_too=False)["return_mean"]

    def derived_config(self) -> dict:
        return {"block_every": self.block_every}

    @property
    def block_every(self) -> int:
        """S, environment steps between blocks: ``min(block_every, total / blocks_per_run)``.

        Each accepted block moves the policy by about τ (in W₂, normalised action units), so the
        improvement per env step is set by S: a fixed cap keeps that rate the same whatever the budget
        (measured on Hopper: the return followed the number of blocks, not the env steps), while
        ``blocks_per_run`` still gives a short run several blocks."""
        at_least = max(self.total_env_steps // self.config.blocks_per_run, 1)
        return at_least if self.config.block_every is None else min(self.config.block_every, at_least)

    # -- the shared off-policy core's hooks -----------------------------------------------------
    def target_actions(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._policy.cascade.sample(next_obs, with_log_prob=self.config.critic_entropy == "exact")

    def update(self, batch: Batch) -> dict[str, float]:
        """SWFP's per-env-step update is the critic's; the policy only changes block by block."""
        return self.td_update(batch, self.alpha)

    def after_updates(self, previous_step: int, env_step: int) -> dict[str, float]:
        """A new block whenever ``env_step`` crosses a multiple of S."""
        if env_step // self.block_every > previous_step // self.block_every:
            with self.timed("block"):
                return self.improve()
        return {}

    def improve(self) -> dict[str, float]:
        """One SWFP refinement step (block n+1), then τ/α adaptation and, at ``max_blocks``, compaction."""
        cfg, cascade = self.config, self._policy.cascade
        start = time.perf_counter()
        train_states, heldout_states = self.sample_states(cfg.pool_size), self.sample_states(cfg.heldout_states)
        scale = self._q_scale(heldout_states)

        def q_fn(obs, actions):
            return self.critic.value(obs, actions, cfg.q_reduce) / scale

        generator = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        result = refine(cascade, train_states, heldout_states, q_fn, cfg.block_config(self.tau, self.alpha), generator)
        self.counts["accepted" if result["accepted"] else "rejected"] += 1
        block = {k: float(v) for k, v in result.items()}
        block.update(seconds=time.perf_counter() - start, tau=self.tau, alpha=self.alpha, q_scale=scale)
        if result["accepted"] and cfg.tau_radius is not None:
            self.tau = adapt_tau(self.tau, result["w2_upper"], cfg.tau_radius)
        if cfg.target_entropy is not None:
            with torch.no_grad():
                entropy = -cascade.sample(heldout_states[:256], with_log_prob=True)[1].mean().item()
            self.alpha *= math.exp(cfg.alpha_lr * (cfg.target_entropy - entropy))
            block["entropy"] = entropy
        if cascade.num_blocks >= cfg.max_blocks:
            block.update(self.compact())
        self.last_block = block
        return {f"block_{k}": v for k, v in block.items()}

    def _q_scale(self, states: torch.Tensor) -> float:
        """The block objective's Q unit under ``π_n`` on ``states`` (see ``q_scale`` in the module docstring)."""
        if self.config.q_scale == "none":
            return 1.0
        with torch.no_grad():
            actions = self._policy.cascade.sample(states)[0]
        if self.config.q_scale == "value":
            with torch.no_grad():
                scale = self.critic.value(states, actions, self.config.q_reduce).abs().mean()
        else:
            actions.requires_grad_(True)
            q = self.critic.value(states, actions, self.config.q_reduce)
            scale = torch.autograd.grad(q.sum(), actions)[0].norm(dim=-1).mean()
        return float(scale.clamp_min(1e-6))

    def compact(self) -> dict[str, float]:
        """Distil the cascade into a new base flow; measure the return just before and after."""
        before = self.evaluate_return(self._policy) if self.evaluate_return else float("nan")
        new_base = compact(self._policy.cascade, self.sample_states(4096), self.config.compaction_steps,
                           generator=torch.Generator().manual_seed(int(self.rng.integers(2**31))))
        self._policy.cascade = Cascade(new_base)
        after = self.evaluate_return(self._policy) if self.evaluate_return else float("nan")
        self.counts["compactions"] += 1
        return {"return_before_compaction": before, "return_after_compaction": after}

    def status(self) -> dict[str, float]:
        keep = ("delta_free_energy", "transport_cost", "w2_upper", "trust_bound")
        return {"blocks": float(self._policy.cascade.num_blocks),
                **{f"blocks_{k}": float(v) for k, v in self.counts.items()}, "tau": self.tau, "alpha": self.alpha,
                **super().status(), **{k: self.last_block[k] for k in keep if k in self.last_block}}

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        cascade = self._policy.cascade
        return {**super().state_dict(), "base": cascade.base.state_dict(),
                "blocks": [{"config": json_config(b.config), "weights": b.state_dict()} for b in cascade.blocks],
                "tau": self.tau, "alpha": self.alpha, "counts": dict(self.counts), "last_block": dict(self.last_block)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        base = self._policy.cascade.base
        base.load_state_dict(state["base"])
        blocks = []
        for entry in state["blocks"]:
            block = JKOBlock(base.obs_dim, base.act_dim, BlockConfig(**entry["config"]))
            block.load_state_dict(entry["weights"])
            blocks.append(block)
        self._policy.cascade = Cascade(base, blocks)
        self.tau, self.alpha = state["tau"], state["alpha"]
        self.counts, self.last_block = dict(state["counts"]), dict(state["last_block"])


def json_config(config) -> dict:
    """A dataclass config as plain JSON types (tuples become lists), storable in a weights-only checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}

