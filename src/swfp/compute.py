"""Compute-cost benchmarks: ``swfp bench compute`` (updates and inference against K and the chain's
length) and ``swfp bench loop`` (where a fine-tuning run's wall time goes, against the floor).

**Why these two.** SWFP's efficiency claim (DESIGN.md §4) is that a policy-improvement step costs
the same however long the chain is: a block is trained on ``(s, a ~ π_n)`` pairs drawn once without
a graph, whereas standard RL on an iterative policy (``bptt``) differentiates through all K Euler
steps. ``bench compute`` measures exactly that, per update, for K = 4 … 64, and what the chain's
length costs at inference (blocks 0 … 32, with and without compaction). ``bench loop`` then puts the
per-update figures in context: the wall time per environment step of a real run, split by phase.

**Memory on CPU.** PyTorch has no peak-allocation counter on CPU, so an update's memory is counted
from what it holds: the parameters being trained with their gradients and two Adam moments
(4 × parameter bytes) plus every tensor the loss's autograd graph saves for the backward pass
(:func:`saved_graph_bytes`). The second is the part that grows with K for ``bptt``.

Timings are medians over ``repeats`` calls after ``warmup`` calls, with ``threads`` torch threads
(default 1, as every grid trial runs); ratios are taken between figures of the same run. Both benchmarks
run on one device (``device``: every network and tensor of the figures is there) and name it in their
tables and in a ``device`` column of their CSV; on CUDA every timed call waits for its queued kernels, so a
figure is the work's, not only its launch's. Memory is counted the same way on any device.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from swfp.algorithms.base import actor_seconds
from swfp.blocks import BlockConfig, JKOBlock
from swfp.cascade import Cascade, draw_pool
from swfp.live import LiveBlock, PrefixPool
from swfp.critic import Critic
from swfp.devices import describe_device, resolve_device, synchronize
from swfp.envs import env_dims, task_spec
from swfp.flow import FlowConfig, FlowPolicy
from swfp.policy import Policy
from swfp.runio import atomic_write_text, write_run_metadata
from swfp.runner import RunConfig, run


def saved_graph_bytes(loss: torch.Tensor) -> int:
    """Bytes of the distinct tensors saved for backward in ``loss``'s autograd graph.

    ``saved_tensors_hooks`` cannot be used on a block's loss: ``torch.func.jacrev`` (inside the
    log-det) refuses to run while such a hook is active. So this walks the graph and reads every
    node's ``_saved_*`` tensors, counting each storage region once (``tests/test_jko.py`` checks it
    against ``saved_tensors_hooks`` where both work).
    """
    seen_nodes, seen_tensors, stack = set(), {}, [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for t in value if isinstance(value, (tuple, list)) else [value]:
                    if isinstance(t, torch.Tensor):
                        seen_tensors[(t.untyped_storage().data_ptr(), t.storage_offset(), t.shape)] = t.nbytes
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(seen_tensors.values())


def training_state_bytes(module: torch.nn.Module) -> int:
    """Parameters, gradients and Adam's two moments of ``module``: 4 × its parameter bytes."""
    return 4 * sum(p.nbytes for p in module.parameters())


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device = torch.device("cpu")) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    return interleaved_medians({"fn": fn}, repeats, warmup, device=device)["fn"]


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                        seed: int = 0, device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Median wall time (ms) of each function, timed in rounds (one call of each per round, in a fresh
    random order every round) after ``warmup`` rounds, so a change of load on the machine during the
    measurement, and whatever the previous call left in the caches, hits all alike and the ratios
    between them stay fair. Each call ends when the work it queued on ``device`` has run."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    rng = np.random.default_rng(seed)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name in rng.permutation(names):
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def machine_line(threads: int, device: torch.device) -> str:
    """The device, the machine and how busy it was: timings on a shared machine are only comparable within a run."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"on {describe_device(device)}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch threads {threads}, load average {load:.1f} when written")


@dataclass
class ComputeConfig:
    """What ``swfp bench compute`` measures; network sizes are the task's defaults (weights random:
    the cost of a pass does not depend on their values)."""

    task: str = "Hopper-v5"
    euler_steps: tuple[int, ...] = (4, 8, 16, 32, 64)      # K for the update costs
    block_counts: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)  # chain lengths for the inference latency
    inference_batches: tuple[int, ...] = (1, 64)
    earlier_blocks: int = 4          # blocks already in the cascade when a new one is trained
    max_blocks: int = 8              # N_max of the compacting cascade
    batch_size: int = 256            # update batch
    repeats: int = 20
    warmup: int = 3
    threads: int = 1
    seed: int = 0

    def __post_init__(self):
        self.euler_steps, self.block_counts = tuple(self.euler_steps), tuple(self.block_counts)
        self.inference_batches = tuple(self.inference_batches)
        if min(self.euler_steps) < 1 or min(self.inference_batches) < 1 or min(self.block_counts) < 0:
            raise ValueError("euler_steps and inference_batches must be >= 1 and block_counts >= 0")
        for name in ("max_blocks", "batch_size", "repeats", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.earlier_blocks < 0:
            raise ValueError("warmup and earlier_blocks must be >= 0")
        task_spec(self.task)  # an unknown task fails here, with the list of known ones


def _flow(obs_dim: int, act_dim: int, task: str, num_steps: int) -> FlowPolicy:
    return FlowPolicy(obs_dim, act_dim, FlowConfig(hidden_dims=task_spec(task).hidden_dims, num_steps=num_steps))


def _random_policy(cascade: Cascade, task: str, device: torch.device) -> Policy:
    obs_dim, act_dim = cascade.obs_dim, cascade.act_dim
    return Policy(cascade, task, np.zeros(obs_dim), np.ones(obs_dim), -np.ones(act_dim), np.ones(act_dim),
                  device=device)


def block_update(config: ComputeConfig, num_steps: int, earlier_blocks: int | None = None,
                 device: torch.device = torch.device("cpu"),
                 ) -> tuple[Callable[[], object], Callable[[], object], float]:
    """SWFP on a cascade whose base has ``num_steps`` Euler steps and ``earlier_blocks`` blocks (default: the
    config's): one step of the
    live block at SWFP's default settings (equation (1) with the box term, Jacobian log-det included, the
    pessimistic value of two critic members; :class:`~swfp.live.LiveBlock`), the redraw of its prefix pool
    (``4 × batch`` states; once per block), and the step's memory in bytes."""
    from swfp.algorithms.swfp import SWFPConfig

    obs_dim, act_dim = env_dims(config.task)
    swfp_config = SWFPConfig(block_batch_size=config.batch_size)
    block_config = swfp_config.block_config()
    cascade = Cascade(_flow(obs_dim, act_dim, config.task, num_steps),
                      [JKOBlock(obs_dim, act_dim, block_config) for _ in range(
                          config.earlier_blocks if earlier_blocks is None else earlier_blocks)]).to(device)
    critic = Critic(obs_dim, act_dim, swfp_config.critic, device)
    states = torch.randn(4 * config.batch_size, obs_dim, device=device)
    pool = PrefixPool(obs_dim, act_dim, len(states), device)
    pool.add(*draw_pool(cascade, states))
    live, rng = LiveBlock(obs_dim, act_dim, block_config, device), np.random.default_rng(config.seed)

    def q_fn(obs, actions):
        return critic.value(obs, actions, members=slice(0, swfp_config.objective_members),
                            pessimism=swfp_config.q_pessimism)

    memory = saved_graph_bytes(live.loss(*pool.sample(config.batch_size, rng), q_fn, block_config.alpha)[0])
    return (lambda: live.step(*pool.sample(config.batch_size, rng), q_fn, block_config.alpha),
            lambda: pool.redraw(cascade), memory + training_state_bytes(live.block))


def bptt_update(config: ComputeConfig, num_steps: int, device: torch.device) -> tuple[Callable[[], object], float]:
    """One ``bptt`` actor update (−Q back-propagated through all ``num_steps`` Euler steps, plus flow
    matching) on random replay data, and its memory in bytes."""
    from swfp.algorithms.bptt import BPTT, BPTTConfig

    obs_dim, act_dim = env_dims(config.task)
    learner = BPTT(_random_policy(Cascade(_flow(obs_dim, act_dim, config.task, num_steps)), config.task, device),
                   None, BPTTConfig(batch_size=config.batch_size))
    rng = np.random.default_rng(config.seed)
    n = 4 * config.batch_size
    learner.observe(rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, act_dim)), rng.normal(size=n),
                    rng.normal(size=(n, obs_dim)), np.zeros(n))
    memory = saved_graph_bytes(learner.actor_loss(learner.sample_batch())[0])
    return lambda: learner.actor_update(learner.sample_batch()), memory + training_state_bytes(learner.flow)


def update_costs(config: ComputeConfig, device: torch.device) -> list[dict]:
    """Rows per K: SWFP's block step and bptt's actor update, time (interleaved) and memory, and their ratios."""
    fns, memory = {}, {}
    for k in config.euler_steps:
        fns[f"swfp_block_step_ms/{k}"], fns[f"swfp_pool_draw_ms/{k}"], memory[f"swfp_block_memory_mb/{k}"] = \
            block_update(config, k, device=device)
        fns[f"bptt_actor_update_ms/{k}"], memory[f"bptt_memory_mb/{k}"] = bptt_update(config, k, device)
    figures = {**interleaved_medians(fns, config.repeats, config.warmup, device=device),
               **{name: value / 2**20 for name, value in memory.items()}}
    rows = []
    for k in config.euler_steps:
        row = {"euler_steps": k, **{name.split("/")[0]: value for name, value in figures.items()
                                    if name.endswith(f"/{k}")}}
        row["bptt_over_swfp_time"] = row["bptt_actor_update_ms"] / row["swfp_block_step_ms"]
        row["bptt_over_swfp_memory"] = row["bptt_memory_mb"] / row["swfp_block_memory_mb"]
        rows.append({**row, "device": describe_device(device)})
    return rows


def inference_latency(config: ComputeConfig, device: torch.device) -> list[dict]:
    """Latency of ``Policy.normalized_actions`` (what collection and evaluation call) after n appended blocks.

    Without compaction the cascade holds all n blocks; with compaction (at ``max_blocks``) it holds
    ``n mod max_blocks`` of them behind a base flow of the same size (:func:`swfp.cascade.compact`
    replaces base + blocks by one flow of the base's architecture, so its cost is that of this cascade).
    Every setting is timed in the same round-robin.
    """
    obs_dim, act_dim = env_dims(config.task)
    base = _flow(obs_dim, act_dim, config.task, FlowConfig().num_steps).to(device)
    blocks = [JKOBlock(obs_dim, act_dim, BlockConfig()).to(device) for _ in range(max(config.block_counts))]
    rng = np.random.default_rng(config.seed)
    observations = {b: rng.normal(size=(b, obs_dim)).astype(np.float32) for b in config.inference_batches}
    fns = {}
    for n in config.block_counts:
        for label, kept in (("no_compaction", n), ("compaction", n % config.max_blocks)):
            policy = _random_policy(Cascade(base, blocks[:kept]), config.task, device)
            for batch, obs in observations.items():
                fns[f"{label}_batch{batch}_ms/{n}"] = lambda policy=policy, obs=obs: policy.normalized_actions(obs)
    medians = interleaved_medians(fns, config.repeats, config.warmup, device=device)
    rows = [{"blocks": n, **{name.split("/")[0]: value for name, value in medians.items() if name.endswith(f"/{n}")}}
            for n in config.block_counts]
    for row in rows:
        for batch in config.inference_batches:
            row[f"no_compaction_batch{batch}_over_0_blocks"] = (row[f"no_compaction_batch{batch}_ms"]
                                                                / rows[0][f"no_compaction_batch{batch}_ms"])
        row["device"] = describe_device(device)
    return rows


def chain_costs(config: ComputeConfig, device: torch.device) -> list[dict]:
    """Rows per number of earlier blocks (at the default K): the live block's step and the pool redraw, time
    (interleaved) and memory. The step reads the pool only, so its time and memory stay flat; the redraw
    (once per block) runs the chain and grows with it."""
    fns, memory = {}, {}
    k = FlowConfig().num_steps
    for n in config.block_counts:
        fns[f"swfp_block_step_ms/{n}"], fns[f"swfp_pool_draw_ms/{n}"], memory[f"swfp_block_memory_mb/{n}"] = \
            block_update(config, k, earlier_blocks=n, device=device)
    figures = {**interleaved_medians(fns, config.repeats, config.warmup, device=device),
               **{name: value / 2**20 for name, value in memory.items()}}
    return [{"earlier_blocks": n, "euler_steps": k, **{name.split("/")[0]: value for name, value in figures.items()
                                                        if name.endswith(f"/{n}")}, "device": describe_device(device)}
            for n in config.block_counts]


def bench_compute(config: ComputeConfig, out: Path, device: torch.device | str = "auto") -> dict[str, list[dict]]:
    """Measure both tables on ``device``; write ``compute_updates.csv``, ``compute_inference.csv``, ``compute.md``
    and plots."""
    from swfp.bench import write_rows_csv

    device = resolve_device(device)
    torch.manual_seed(config.seed)
    with torch_threads(config.threads):
        updates, chain = update_costs(config, device), chain_costs(config, device)
        inference = inference_latency(config, device)
    out = Path(out)
    write_run_metadata(out, asdict(config), config.seed, kind="bench-compute", device=device)
    write_rows_csv(out / "compute_updates.csv", updates)
    write_rows_csv(out / "compute_chain.csv", chain)
    write_rows_csv(out / "compute_inference.csv", inference)
    atomic_write_text(out / "compute.md", compute_markdown(config, updates, chain, inference, device))
    plot_compute(config, updates, inference, out)
    return {"updates": updates, "chain": chain, "inference": inference}


def compute_markdown(config: ComputeConfig, updates: list[dict], chain: list[dict], inference: list[dict],
                     device: torch.device) -> str:
    lines = [f"Update cost against K, {config.task} network sizes, batch {config.batch_size}, "
             f"median of {config.repeats} ({machine_line(config.threads, device)})", "",
             "| K | SWFP block step (ms) | bptt actor update (ms) | bptt / SWFP time | SWFP block memory (MB) | "
             "bptt memory (MB) | bptt / SWFP memory | SWFP pool draw, once per block (ms) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['euler_steps']} | {r['swfp_block_step_ms']:.1f} | {r['bptt_actor_update_ms']:.1f} | "
              f"{r['bptt_over_swfp_time']:.1f} | {r['swfp_block_memory_mb']:.1f} | {r['bptt_memory_mb']:.1f} | "
              f"{r['bptt_over_swfp_memory']:.1f} | {r['swfp_pool_draw_ms']:.0f} |" for r in updates]
    lines += ["", "Memory: parameters + gradients + Adam moments of what is trained, plus the activations its loss "
              "saves for backward.", "",
              f"SWFP's live block step against the blocks already in the chain, K = {FlowConfig().num_steps}", "",
              "| earlier blocks | block step (ms) | block memory (MB) | pool redraw, once per block (ms) |",
              "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['earlier_blocks']} | {r['swfp_block_step_ms']:.1f} | {r['swfp_block_memory_mb']:.2f} | "
              f"{r['swfp_pool_draw_ms']:.0f} |" for r in chain]
    lines += ["",
              f"Action inference latency (ms) against appended blocks, base K = {FlowConfig().num_steps}, "
              f"compaction at {config.max_blocks} blocks", ""]
    batches = config.inference_batches
    lines.append("| blocks | " + " | ".join(f"batch {b}: no compaction | batch {b}: compaction" for b in batches) + " |")
    lines.append("| ---: |" + " ---: | ---: |" * len(batches))
    lines += ["| " + " | ".join([str(r["blocks"])] + [f"{r[f'{label}_batch{b}_ms']:.2f}" for b in batches
                                                     for label in ("no_compaction", "compaction")]) + " |"
              for r in inference]
    return "\n".join(lines) + "\n"


def plot_compute(config: ComputeConfig, updates: list[dict], inference: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from swfp.logger import save_figure

    ks = [r["euler_steps"] for r in updates]
    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("swfp_block_step_ms", "SWFP block step"), ("bptt_actor_update_ms", "bptt actor update")):
        ax_time.plot(ks, [r[key] for r in updates], marker="o", label=label)
    for key, label in (("swfp_block_memory_mb", "SWFP block step"), ("bptt_memory_mb", "bptt actor update")):
        ax_memory.plot(ks, [r[key] for r in updates], marker="o", label=label)
    for ax, ylabel in ((ax_time, "ms per update"), (ax_memory, "MB per update")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("Euler steps K")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(f"Update cost against K ({config.task} sizes, batch {config.batch_size})")
    save_figure(fig, out / "compute_updates.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    blocks = [r["blocks"] for r in inference]
    for batch in config.inference_batches:
        for label, style in (("no_compaction", "-"), ("compaction", "--")):
            ax.plot(blocks, [r[f"{label}_batch{batch}_ms"] for r in inference], style, marker="o",
                    label=f"batch {batch}, {label.replace('_', ' ')}")
    ax.set_xlabel("blocks appended")
    ax.set_ylabel("ms per action batch")
    ax.legend()
    ax.set_title(f"Inference latency (compaction at {config.max_blocks} blocks)")
    save_figure(fig, out / "compute_inference.png")


# -- the fine-tuning loop's cost ---------------------------------------------------------------------
PHASES = ("collect", "critic", "actor", "transfer", "eval", "log")


@dataclass
class LoopConfig:
    """What ``swfp bench loop`` runs: the first ``env_steps`` of a real fine-tuning run from ``pretrained``
    whose schedules (evaluation every 1/20, checkpoints every 1/10, SWFP's block interval) are those of a
    ``budget``-step run, so the per-step cost of every phase is the one a full run of that budget pays."""

    pretrained: str
    algo: str = "swfp"
    env_steps: int = 20_000
    budget: int = 200_000
    seed: int = 0
    repeats: int = 50
    threads: int = 1
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        from swfp.algorithms import get_algorithm
        from swfp.algorithms.base import OffPolicyLearner

        if not issubclass(get_algorithm(self.algo), OffPolicyLearner):
            raise ValueError(f"bench loop splits a critic from an actor update: it measures the off-policy methods, "
                             f"not {self.algo!r} (swfp, bptt, dsrl, fql, dipo, sac and rlpd are)")
        if self.env_steps < 2 or self.repeats < 1 or self.threads < 1:
            raise ValueError("need env_steps >= 2, repeats >= 1 and threads >= 1")
        if self.budget < self.env_steps:
            raise ValueError(f"budget ({self.budget}) must be >= env_steps ({self.env_steps}): the run measured is "
                             "the start of a run of that budget")


def loop_split(summary: dict) -> dict[str, float]:
    """Seconds per env step by phase from a run's summary: the runner's collection, evaluation and logging
    (logging + checkpoints), the host↔device copies of them all (``transfer``: observations, actions and replay
    batches, taken out of the other phases by the runner), and the learner's critic and actor time
    (:func:`~swfp.algorithms.base.actor_seconds`: SWFP's block work, the others' update less critic and replay
    sampling); "other" is the rest of the learner's ``train``. The learner's clocks include the batches'
    copies (in its replay sampling, so never in critic or actor), the runner's ``train`` does not, so "other"
    is net of them."""
    per_step = summary["seconds_per_env_step"]
    steps = summary["env_steps"]
    status = summary["status"]
    critic = status.get("critic_seconds", 0.0) / steps
    actor = actor_seconds(status) / steps
    return {"collect": per_step["collect"], "critic": critic, "actor": actor, "transfer": per_step["transfer"],
            "eval": per_step["eval"], "log": per_step["log"] + per_step["checkpoint"],
            "other": per_step["train"] - critic - actor}


def loop_floor(learner, summary: dict, config: LoopConfig) -> dict[str, float]:
    """The same work measured alone, per env step: one environment step plus one batch-1 action
    (collection, its copies included), ``utd_ratio`` critic updates, the method's actor update (or SWFP's
    block judging or training, amortised over its interval, plus on the live schedule ``utd_ratio`` live-block
    steps), ``utd_ratio`` copies of a replay batch to the device (transfer);
    evaluation and logging have no floor (they are the work itself)."""
    from swfp.envs import make_env

    env = make_env(summary["task"])
    env.reset(seed=config.seed)
    action = np.zeros(env.action_space.shape, dtype=np.float32)

    def env_step():
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()

    device = learner.device
    obs = np.zeros((1, learner.obs_dim), dtype=np.float32)
    collect = (median_ms(env_step, config.repeats, 5)
               + median_ms(lambda: learner.act(obs), config.repeats, 5, device))
    env.close()
    utd = getattr(learner.config, "utd_ratio", 1)
    host_batch = learner.replay.sample(learner.config.batch_size, learner.rng)
    transfer = utd * median_ms(lambda: host_batch.to(device), config.repeats, 5, device)
    batch = learner.sample_batch()  # replay sampling is "other", in the loop as here
    critic = utd * median_ms(lambda: learner.td_update(batch), config.repeats, 5, device)
    if hasattr(learner, "improve"):  # SWFP: one block (train, measure, maybe compact) per block_every steps
        synchronize(device)
        start = time.perf_counter()
        learner.improve()
        synchronize(device)
        actor = 1000 * (time.perf_counter() - start) / learner.block_every
        # the live schedule: one step of the live block per critic update too, once its pool holds a batch
        if learner.live is not None and len(learner.pool) >= learner.config.block_batch_size:
            actor += utd * median_ms(learner.block_update, config.repeats, 5, device)
    elif hasattr(learner, "actor_update"):
        actor = utd * median_ms(lambda: learner.actor_update(batch), config.repeats, 5, device)
    else:
        actor = utd * median_ms(lambda: learner.update(batch), config.repeats, 5, device) - critic
    return {"collect": collect / 1000, "critic": critic / 1000, "actor": actor / 1000, "transfer": transfer / 1000}


def bench_loop(config: LoopConfig, out: Path, device: torch.device | str = "auto") -> list[dict]:
    """Run the fine-tuning on ``device``, then the floor; write ``loop.csv``, ``loop.md`` and ``loop.png`` under
    ``out``."""
    from swfp.algorithms import get_algorithm, make_config
    from swfp.bench import write_rows_csv

    device = resolve_device(device)
    out = Path(out)
    with torch_threads(config.threads):
        learner = get_algorithm(config.algo).from_pretrained(config.pretrained,
                                                             config=make_config(config.algo, config.settings),
                                                             total_env_steps=config.budget, device=device)
        learner.rng = np.random.default_rng(config.seed)
        run_config = RunConfig(task=learner.policy().task_id, total_env_steps=config.env_steps, seed=config.seed,
                               eval_every=max(config.budget // 20, 1),
                               checkpoint_every=max(config.budget // 10, 1)).resolved()
        learner.prepare(run_config)
        summary = run(learner, run_config, out / "run", run_config={"algorithm": config.algo, "run": run_config,
                                                                    "config": learner.config, "budget": config.budget})
        in_loop, floor = loop_split(summary), loop_floor(learner, summary, config)
    rows = [{"phase": phase, "in_loop_ms": 1000 * in_loop[phase],
             "alone_ms": 1000 * floor[phase] if phase in floor else float("nan")} for phase in (*PHASES, "other")]
    total = sum(r["in_loop_ms"] for r in rows)
    rows.append({"phase": "total", "in_loop_ms": total, "alone_ms": sum(1000 * v for v in floor.values())})
    rows = [{**row, "device": describe_device(device)} for row in rows]
    write_run_metadata(out, asdict(config), config.seed, kind="bench-loop", device=device)
    write_rows_csv(out / "loop.csv", rows)
    lines = [f"Wall time per environment step, {config.algo} on {summary['task']}: the first {config.env_steps} env "
             f"steps of a {config.budget}-step run ({machine_line(config.threads, device)})", "",
             "| phase | in the loop (ms/env step) | measured alone (ms/env step) | loop / alone |",
             "| --- | ---: | ---: | ---: |"]
    for r in rows:
        alone = "—" if np.isnan(r["alone_ms"]) else f"{r['alone_ms']:.2f}"
        ratio = "—" if np.isnan(r["alone_ms"]) or r["alone_ms"] <= 0 else f"{r['in_loop_ms'] / r['alone_ms']:.2f}"
        lines.append(f"| {r['phase']} | {r['in_loop_ms']:.2f} | {alone} | {ratio} |")
    lines += ["", "collect: one env step and one batch-1 action; critic: utd_ratio TD updates (target actions from "
              "the policy included); actor: the method's policy update (SWFP: block training and measurement, and "
              "compaction, amortised over the env steps between blocks); transfer: every host↔device copy of the "
              "loop (observations to the device, actions back, replay batches to the device; alone: utd_ratio "
              "batch copies; no copy at all on the CPU); log: CSV/TensorBoard and checkpoints; "
              "other: the rest of the learner's train() (replay sampling and bookkeeping).",
              "", f"Once, before the loop: the critic's warm-up on the demonstrations, "
              f"{summary['status'].get('warmup_seconds', 0.0):.0f} s."]
    atomic_write_text(out / "loop.md", "\n".join(lines) + "\n")
    plot_loop(rows, config, summary["task"], out / "loop.png")
    return rows


def plot_loop(rows: list[dict], config: LoopConfig, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from swfp.logger import save_figure

    phases = [r for r in rows if r["phase"] != "total"]
    x = np.arange(len(phases))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, [r["in_loop_ms"] for r in phases], 0.4, label="in the loop")
    ax.bar(x + 0.2, [0.0 if np.isnan(r["alone_ms"]) else r["alone_ms"] for r in phases], 0.4, label="alone (floor)")
    ax.set_xticks(x, [r["phase"] for r in phases])
    ax.set_ylabel("ms per env step")
    ax.set_title(f"{config.algo} on {task}: where an env step's time goes")
    ax.legend()
    save_figure(fig, path)
