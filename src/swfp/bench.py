"""Benchmarks: measured figures on this machine, written as CSV and a Markdown table.

``swfp bench envs`` times environment stepping with Gymnasium's synchronous and asynchronous
vector environments, the measurement behind :func:`swfp.envs.make_vector_env` being synchronous. ``swfp bench bc``
pre-trains flow policies on the medium demonstrations of each task over several seeds and
tabulates their return against the dataset's. ``swfp bench critic`` times SWFP's critic update
with and without the exact entropy term in its target. ``swfp bench compaction`` measures whether
compacting a run's cascade keeps its actions and its return.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from swfp.envs import make_env, task_spec
from swfp.runio import atomic_write_json, atomic_write_text, write_run_metadata

if TYPE_CHECKING:  # torch is imported where it is used: ``swfp bench envs`` runs without it
    import torch


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """One row per dict (floats to 3 decimals), atomically; a text cell is quoted where it needs it."""
    import csv
    import io

    header = list(rows[0])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([f"{r[h]:.3f}" if isinstance(r[h], float) else str(r[h]) for h in header] for r in rows)
    atomic_write_text(path, text.getvalue())


def time_vector_env(task_id: str, kind: str, num_envs: int, steps: int, seed: int = 0) -> float:
    """Environment steps per second (summed over sub-environments) with uniform random actions,
    after a warm-up of ``steps // 10`` vector steps."""
    limit = task_spec(task_id).max_episode_steps
    fns = [lambda: make_env(task_id, max_episode_steps=limit) for _ in range(num_envs)]
    cls = {"sync": SyncVectorEnv, "async": AsyncVectorEnv}[kind]
    venv = cls(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    try:
        venv.reset(seed=seed)
        actions = np.random.default_rng(seed).uniform(-1, 1, (steps + steps // 10, *venv.action_space.shape))
        actions = actions.astype(np.float32)
        for a in actions[: steps // 10]:
            venv.step(a)
        start = time.perf_counter()
        for a in actions[steps // 10:]:
            venv.step(a)
        return steps * num_envs / (time.perf_counter() - start)
    finally:
        venv.close()


def bench_envs(task_id: str, num_envs: list[int], steps: int, out: Path) -> list[dict]:
    """Measure sync and async stepping for each ``num_envs``; write ``envs.csv`` and ``envs.md``."""
    rows = []
    for n in num_envs:
        rates = {kind: time_vector_env(task_id, kind, n, steps) for kind in ("sync", "async")}
        rows.append({"task": task_id, "num_envs": n, "sync_steps_per_s": rates["sync"],
                     "async_steps_per_s": rates["async"], "async_over_sync": rates["async"] / rates["sync"]})
    out = Path(out)
    write_run_metadata(out, {"task": task_id, "num_envs": num_envs, "steps": steps}, seed=0, kind="bench-envs")
    write_rows_csv(out / "envs.csv", rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [f"Vector-env stepping, {task_id}, random actions, {steps} vector steps ({machine})", "",
             "| envs | sync steps/s | async steps/s | async / sync |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['num_envs']} | {r['sync_steps_per_s']:.0f} | {r['async_steps_per_s']:.0f} | "
              f"{r['async_over_sync']:.2f} |" for r in rows]
    atomic_write_text(out / "envs.md", "\n".join(lines) + "\n")
    return rows


def bench_bc(tasks: list[str], seeds: list[int], steps: int, episodes: int, out: Path,
             device: torch.device | str = "auto") -> list[dict]:
    """BC on each task's medium demonstrations, one pre-training run per seed on ``device``; resumable.

    The dataset ``out/data/<task>-medium.npz`` is made from the shipped expert (demo seed 0) if
    missing; a run whose ``summary.json`` exists is not repeated. The table aggregates every
    finished run under ``out/runs`` (so several invocations over different tasks share one table).
    """
    from swfp.assets import shipped_expert_dir
    from swfp.demos import generate_demos
    from swfp.pretrain import PretrainConfig, pretrain

    out = Path(out)
    write_run_metadata(out, {"tasks": tasks, "seeds": seeds, "steps": steps, "episodes": episodes}, seed=0,
                       kind="bench-bc")
    for task in tasks:
        data = out / "data" / f"{task.lower()}-medium.npz"
        if not data.is_file():
            generate_demos(task, shipped_expert_dir(task), "medium", episodes, seed=0).save(data)
        for seed in seeds:
            run = out / "runs" / task / f"seed{seed}"
            if not (run / "summary.json").is_file():
                pretrain(PretrainConfig(dataset=str(data), steps=steps, seed=seed), run, device)
    return write_bc_table(out)


def write_bc_table(out: Path) -> list[dict]:
    """``bc.csv`` (one row per run) and ``bc.md`` (mean ± std over seeds per task) from ``out/runs``."""
    import json

    runs = sorted(Path(out).glob("runs/*/seed*/summary.json"))
    rows = []
    for path in runs:
        s = json.loads(path.read_text())
        rows.append({"task": s["task"], "seed": int(path.parent.name.removeprefix("seed")), "steps": s["steps"],
                     "dataset_return": s["dataset_return_mean"], "bc_return": s["bc_eval"]["return_mean"],
                     "bc_return_std": s["bc_eval"]["return_std"], "train_seconds": s["train_seconds"]})
    if not rows:
        return rows
    write_rows_csv(Path(out) / "bc.csv", rows)
    lines = ["| task | dataset return | BC return (mean ± std over seeds) | seeds | steps | train time per run |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for task in sorted({r["task"] for r in rows}):
        rs = [r for r in rows if r["task"] == task]
        bc = np.array([r["bc_return"] for r in rs])
        lines.append(f"| {task} | {rs[0]['dataset_return']:.1f} | {bc.mean():.1f} ± {bc.std():.1f} | {len(rs)} | "
                     f"{rs[0]['steps']} | {np.mean([r['train_seconds'] for r in rs]):.0f} s |")
    atomic_write_text(Path(out) / "bc.md", "\n".join(lines) + "\n")
    return rows


def bench_critic_entropy(tasks: list[str], repeats: int, out: Path, device: torch.device | str = "auto") -> list[dict]:
    """Median wall time of one SWFP critic update with ``critic_entropy="none"`` vs ``"exact"``, on ``device``.

    ``"exact"`` needs the cascade's log-density of every target action: K Jacobians per sample.
    The networks have each task's default sizes (base flow K = 10, batch 256); weights are random,
    which does not change the cost. Medians over ``repeats`` updates after 5 warm-up updates.
    """
    import statistics

    import torch

    from swfp.buffer import Batch
    from swfp.cascade import Cascade
    from swfp.critic import Critic, CriticConfig
    from swfp.devices import describe_device, resolve_device
    from swfp.envs import env_dims
    from swfp.flow import FlowConfig, FlowPolicy

    device = resolve_device(device)
    rows = []
    for task in tasks:
        obs_dim, act_dim = env_dims(task)
        cascade = Cascade(FlowPolicy(obs_dim, act_dim, FlowConfig(hidden_dims=task_spec(task).hidden_dims))).to(device)
        critic = Critic(obs_dim, act_dim, CriticConfig(), device)
        batch = Batch(torch.randn(256, obs_dim), torch.rand(256, act_dim) * 2 - 1, torch.randn(256),
                      torch.randn(256, obs_dim), torch.zeros(256), torch.ones(256)).to(device)
        row = {"task": task, "act_dim": act_dim}
        for mode in ("none", "exact"):
            times = []
            for i in range(repeats + 5):
                start = time.perf_counter()
                with torch.no_grad():
                    next_actions, next_log_prob = cascade.sample(batch.next_observations, with_log_prob=mode == "exact")
                critic.update(batch, next_actions, next_log_prob, 0.01)
                if i >= 5:
                    times.append(time.perf_counter() - start)
            row[f"{mode}_ms"] = 1000 * statistics.median(times)
        row["exact_over_none"] = row["exact_ms"] / row["none_ms"]
        rows.append(row)
    out = Path(out)
    write_run_metadata(out, {"tasks": tasks, "repeats": repeats}, seed=0, kind="bench-critic-entropy", device=device)
    write_rows_csv(out / "critic_entropy.csv", rows)
    lines = [f"SWFP critic update (batch 256, K = 10, on {describe_device(device)}, {os.cpu_count()} cores, torch "
             f"threads {torch.get_num_threads()}), median of {repeats}", "",
             "| task | action dim | entropy none (ms) | entropy exact (ms) | exact / none |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['task']} | {r['act_dim']} | {r['none_ms']:.1f} | {r['exact_ms']:.1f} | {r['exact_over_none']:.1f} |"
              for r in rows]
    atomic_write_text(out / "critic_entropy.md", "\n".join(lines) + "\n")
    return rows


def paired_change(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Mean of ``after − before`` over paired episodes and the half-width of its 95 % interval
    (normal approximation, ``1.96·sd/√n``)."""
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else float("nan")
    return float(diff.mean()), float(half)


def bench_compaction(run: Path, episodes: int, state_episodes: int, steps: int, seed: int, out: Path,
                     device: torch.device | str = "auto") -> dict:
    """Does compaction keep the policy? A cascade and its compacted flow, measured side by side.

    The policy of ``run`` (a SWFP run directory, finished or checkpointed, whose cascade holds blocks)
    is distilled by :func:`swfp.cascade.compact` with SWFP's settings (``steps`` at batch 256, lr 1e-4)
    on the states it visits in ``state_episodes`` stochastic episodes (env seeds ``seed + 2_000_000 + i``):
    the online part of SWFP's replay is such states. Then:

    * **returns, paired**: both policies on the same ``episodes`` env seeds (``seed + i``) with the same
      torch seed, so the two evaluations share their start states and, until the trajectories part,
      their policy noise; the change is the mean per-episode difference with a 95 % interval, for the
      stochastic and the deterministic (``x0 = 0``) policy;
    * **actions, same noise**: on the states the cascade visited in that stochastic evaluation (not
      fitted on), the blocks' move ``E‖π_n(s, x0) − π_base(s, x0)‖`` against the compaction's error
      ``E‖π_compacted(s, x0) − π_n(s, x0)‖``.

    Writes ``compaction.json`` (every figure and per-episode return) and ``compaction.md``.
    """
    import torch

    from swfp.cascade import Cascade, compact
    from swfp.devices import generator, resolve_device
    from swfp.evaluate import evaluate
    from swfp.policy import Policy

    device = resolve_device(device)
    policy = Policy.load(Path(run), device)
    cascade = policy.cascade
    if cascade.num_blocks == 0:
        raise ValueError(f"the policy in {run} has no blocks, so there is nothing to compact; pass a SWFP run "
                         "directory whose policy.json lists blocks (a run saves its policy at every checkpoint)")

    def play(acting: Policy, deterministic: bool, env_seed: int, count: int) -> tuple[np.ndarray, torch.Tensor]:
        """Returns of ``count`` episodes and the (normalised) states they visited."""
        visited = []

        def act(obs):
            visited.append(obs.copy())
            return acting.normalized_actions(obs, deterministic)
        torch.manual_seed(seed)
        result = evaluate(act, policy.task_id, count, env_seed, acting.action_chunk)
        return result.returns, policy.normalize_obs(np.concatenate(visited))

    _, fit_states = play(policy, False, seed + 2_000_000, state_episodes)
    start = time.perf_counter()
    new_base = compact(cascade, fit_states, steps, generator=generator(device, seed))
    seconds = time.perf_counter() - start
    compacted = Policy(Cascade(new_base), policy.task_id, policy.obs_mean, policy.obs_std,
                       policy.action_low, policy.action_high, policy.action_chunk, device)

    result = {"run": str(run), "task": policy.task_id, "blocks": cascade.num_blocks, "compaction_steps": steps,
              "fit_states": len(fit_states), "compaction_seconds": seconds, "episodes": episodes}
    paired = {label: (play(policy, deterministic, seed, episodes), play(compacted, deterministic, seed, episodes)[0])
              for label, deterministic in (("stochastic", False), ("deterministic", True))}
    heldout = paired["stochastic"][0][1]
    noise = torch.randn(len(heldout), cascade.act_dim, generator=generator(device, seed + 1), device=device)
    for label, ((before, _), after) in paired.items():
        change, half = paired_change(before, after)
        x0 = noise if label == "stochastic" else torch.zeros_like(noise)
        with torch.no_grad():
            target = cascade.sample(heldout, noise=x0)[0]
            move = (target - cascade.base.sample(heldout, noise=x0)[0]).norm(dim=-1).mean().item()
            error = (compacted.cascade.sample(heldout, noise=x0)[0] - target).norm(dim=-1).mean().item()
        result[label] = {"return_cascade": float(before.mean()), "return_compacted": float(after.mean()),
                         "change": change, "change_ci95": half, "blocks_move": move, "compaction_error": error,
                         "returns_cascade": before.tolist(), "returns_compacted": after.tolist()}
    result["heldout_states"] = len(heldout)

    out = Path(out)
    write_run_metadata(out, {"run": str(run), "episodes": episodes, "state_episodes": state_episodes,
                             "compaction_steps": steps, "seed": seed}, seed=seed, kind="bench-compaction",
                       device=device)
    atomic_write_json(out / "compaction.json", result)
    lines = [f"Compaction of `{run}` ({policy.task_id}, {cascade.num_blocks} blocks): {steps} steps on "
             f"{len(fit_states)} visited states, {seconds:.0f} s; returns paired over {episodes} episodes "
             f"(same env seeds and torch seed), actions on {len(heldout)} held-out visited states (same noise)", "",
             "| policy | return: cascade | compacted | change [95 % CI] | blocks' move | compaction error |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {label} | {r['return_cascade']:.1f} | {r['return_compacted']:.1f} | {r['change']:+.1f} ± "
              f"{r['change_ci95']:.1f} | {r['blocks_move']:.4f} | {r['compaction_error']:.4f} |"
              for label, r in ((label, result[label]) for label in ("stochastic", "deterministic"))]
    atomic_write_text(out / "compaction.md", "\n".join(lines) + "\n")
    return result
