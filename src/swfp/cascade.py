"""The SWFP policy: a base flow followed by accepted JKO blocks, and the operations that grow or shrink it.

``π_n = T_n ∘ … ∘ T_1 # π_base``: sample the base flow (K Euler steps), then apply every block.
The log-density follows by change of variables through the whole chain,

    log π_n(a|s) = log π_base(a_0|s) − Σ_i log|det ∂T_i(s, a_{i−1})|,   a_i = T_i(s, a_{i−1}),

so the cascade is itself a normalising flow, and ``Cascade.sample`` is the one code path for
collection, evaluation and block pools. Growing (DESIGN.md §2): :func:`refine` trains a block against
the current cascade and appends it only if its held-out measurement accepts it. Shrinking
(§3): :func:`compact` distils base + blocks into a new base flow.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from swfp.blocks import BlockConfig, JKOBlock, QFunction, measure_block, train_block
from swfp.flow import FlowPolicy


class Cascade(nn.Module):
    """``π_n``: a base :class:`~swfp.flow.FlowPolicy` and an ``nn.ModuleList`` of frozen :class:`~swfp.blocks.JKOBlock`.

    Every part is frozen in place (``requires_grad=False``, eval mode): SWFP improves the policy by
    appending blocks, never by gradients through the cascade (``compact`` trains a copy).
    """

    def __init__(self, base: FlowPolicy, blocks: Iterable[JKOBlock] = ()):
        super().__init__()
        self.base = base.requires_grad_(False).eval()
        self.blocks = nn.ModuleList()
        for block in blocks:
            self.append(block)

    @property
    def obs_dim(self) -> int:
        return self.base.obs_dim

    @property
    def act_dim(self) -> int:
        return self.base.act_dim

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def append(self, block: JKOBlock) -> None:
        """Freeze ``block`` and make it the last map of the chain."""
        if (block.obs_dim, block.act_dim) != (self.obs_dim, self.act_dim):
            raise ValueError(f"block sizes (obs {block.obs_dim}, act {block.act_dim}) do not match the cascade's "
                             f"(obs {self.obs_dim}, act {self.act_dim})")
        self.blocks.append(block.requires_grad_(False).eval())

    def sample(self, obs: torch.Tensor, noise: torch.Tensor | None = None, deterministic: bool = False,
               with_log_prob: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Actions ``(B, D)`` and, if ``with_log_prob``, ``log π_n(a|s)`` ``(B,)``.

        ``noise`` / ``deterministic`` choose the base flow's ``x0`` (see :meth:`FlowPolicy.sample`);
        the blocks are deterministic maps. The log-density is the base's exact one minus each
        block's log-det.
        """
        actions, log_prob = self.base.sample(obs, noise=noise, deterministic=deterministic, with_log_prob=with_log_prob)
        if not with_log_prob:
            return self.apply_blocks(obs, actions), None
        for block in self.blocks:
            actions, log_det = block.forward_log_det(obs, actions)
            log_prob = log_prob - log_det
        return actions, log_prob

    def apply_blocks(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``T_n ∘ … ∘ T_1`` applied to base actions ``a_0``: the cascade's actions."""
        for block in self.blocks:
            actions = block(obs, actions)
        return actions

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, max_iters: int = 200, tol: float = 1e-5) -> torch.Tensor:
        """Exact ``log π_n(a|s)`` ``(B,)`` of arbitrary actions: undo the blocks in reverse, then the base flow's
        ``log_prob``, minus the blocks' log-dets along the recovered path. Raises
        :class:`~swfp.flow.InversionError` where a map cannot be inverted."""
        path = [actions]  # a_n, a_{n-1}, …, a_0
        for block in reversed(self.blocks):
            path.append(block.inverse(obs, path[-1], max_iters, tol))
        log_prob = self.base.log_prob(obs, path[-1], max_iters, tol)
        for block, x in zip(self.blocks, reversed(path)):  # block i maps a_{i-1} -> a_i
            log_prob = log_prob - block.forward_log_det(obs, x)[1]
        return log_prob


@torch.no_grad()
def draw_pool(cascade: Cascade, states: torch.Tensor, generator: torch.Generator | None = None,
              size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, a ~ π_n(·|s))`` pairs from one no-grad pass: ``size`` states drawn with replacement, or every
    state once (in order) when ``size`` is None. The actions carry no graph, which is what makes a
    block's training cost independent of the chain's length."""
    obs = states if size is None else states[torch.randint(len(states), (size,), generator=generator,
                                                           device=states.device)]
    noise = torch.randn(obs.shape[0], cascade.act_dim, generator=generator, dtype=obs.dtype, device=obs.device)
    return obs, cascade.sample(obs, noise=noise)[0]


def accept_if_improves(cascade: Cascade, block: JKOBlock, obs: torch.Tensor, actions: torch.Tensor,
                       q_fn: QFunction, alpha: float) -> dict:
    """Measure ``block`` on held-out ``(s, a ~ π_n)`` pairs (:func:`~swfp.blocks.measure_block`) and append it
    only if accepted. Nothing is mutated before the decision: a rejected block leaves the cascade
    bit-for-bit as it was (``π_n`` stays)."""
    metrics = measure_block(block, obs, actions, q_fn, alpha)
    if metrics["accepted"]:
        cascade.append(block)
    return metrics


def refine(cascade: Cascade, train_states: torch.Tensor, heldout_states: torch.Tensor, q_fn: QFunction,
           config: BlockConfig, generator: torch.Generator | None = None) -> dict:
    """One SWFP refinement step: draw a pool from ``π_n`` on ``train_states``, train block n+1 on it
    (:func:`~swfp.blocks.train_block`), measure it on one fresh action per held-out state and append
    it if accepted. Returns the training and measurement metrics (``accepted`` among them). The new
    block's hidden layers are initialised from the global RNG, everything else from ``generator``."""
    block = JKOBlock(cascade.obs_dim, cascade.act_dim, config).to(train_states.device)
    metrics = train_block(block, *draw_pool(cascade, train_states, generator, config.pool_size), q_fn, config,
                          generator)
    return {**metrics, **accept_if_improves(cascade, block, *draw_pool(cascade, heldout_states, generator), q_fn,
                                            config.alpha)}


def compact(cascade: Cascade, obs: torch.Tensor, steps: int, batch_size: int = 256, lr: float = 1e-4,
            generator: torch.Generator | None = None) -> FlowPolicy:
    """Distil base + blocks into one new base flow, by flow matching along the cascade's own paths.

    Why: every block adds its M sub-steps to each action's inference cost (and the exact
    log-density one Jacobian per sub-step), so a cascade that keeps growing would make acting ever
    slower. Capping its length at ``N_max`` and compacting keeps inference at the base's K steps.

    How: for a state ``s`` and noise ``x_0``, the old base's Euler chain visits ``x_0, …, x_K`` with
    velocities ``v_k = v_old(s, x_k, t_k)``, and the blocks then move ``x_K`` to the cascade's action
    ``a = x_K + δ``. Shifting the chain by ``t_k·δ`` gives another K-step Euler chain from the same
    ``x_0`` to ``a``:

        x'_k = x_k + t_k·δ,    x'_{k+1} = x'_k + h·(v_k + δ),    x'_K = a.

    The new base (a warm-started copy of the old one, which already has the right paths up to δ)
    regresses its velocity onto that chain at a uniformly drawn step ``k``, fresh ``(s, x_0)`` each
    gradient step:

        L = E_{s, x_0, k} ‖v_new(s, x'_k, t_k) − (v_k + δ)‖².

    At ``L = 0`` the new sampler maps every noise to exactly the cascade's action, so the
    noise-to-action coupling is kept (the deterministic ``x_0 = 0`` action included), not only the
    distribution. Plain flow matching on ``(s, a ~ π_n)`` pairs with independent noise, our first
    version, fits the distribution only, through a far noisier regression target: on a Walker2d-v5
    cascade of 7 blocks (seed 2 at 76k env steps, whose blocks moved actions by 0.064 on average,
    same noise) its compacted flow ended 0.127 away from the cascade's actions, i.e. it undid the
    blocks; this one ends 0.007 away (seed 0: 0.010 against a move of 0.060) at the same cost
    (2000 steps, lr 1e-4, batch 256). The caller builds ``Cascade(new_base)`` (no blocks).
    """
    old, h = cascade.base, cascade.base.step_size
    base = copy.deepcopy(old).requires_grad_(True).train()
    optimizer = torch.optim.Adam(base.parameters(), lr=lr)
    rows = torch.arange(batch_size, device=obs.device)
    times = torch.tensor([k * h for k in range(old.num_steps)], dtype=obs.dtype, device=obs.device)  # as the sampler's
    for _ in range(steps):
        with torch.no_grad():
            s = obs[torch.randint(len(obs), (batch_size,), generator=generator, device=obs.device)]
            noise = torch.randn(batch_size, cascade.act_dim, generator=generator, dtype=obs.dtype, device=obs.device)
            points, velocities = old.euler_path(s, noise)
            end = points[-1] + h * velocities[-1]
            delta = cascade.apply_blocks(s, end) - end
            k = torch.randint(old.num_steps, (batch_size,), generator=generator, device=obs.device)
            t = times[k]
            x_shifted = points[k, rows] + t[:, None] * delta
            target = velocities[k, rows] + delta
        loss = (base.velocity(s, x_shifted, t) - target).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return base.requires_grad_(False).eval()
