"""Benchmarks: measured figures on this machine, written as CSV and a Markdown table.

``swfp bench envs`` times environment stepping with Gymnasium's synchronous and asynchronous
vector environments, the measurement behind :func:`swfp.envs.make_vector_env` being synchronous. ``swfp bench bc``
pre-trains flow policies on the medium demonstrations of each task over several seeds and
tabulates their return against the dataset's. ``swfp bench critic`` times SWFP's critic update
with and without the exact entropy term in its target.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from swfp.envs import make_env, task_spec
from swfp.runio import atomic_write_text, write_run_metadata


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """One row per dict (floats to 3 decimals), atomically."""
    header = list(rows[0])
    atomic_write_text(path, "\n".join([",".join(header)] + [
        ",".join(f"{r[h]:.3f}" if isinstance(r[h], float) else str(r[h]) for h in header) for r in rows]) + "\n")


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


def bench_bc(tasks: list[str], seeds: list[int], steps: int, episodes: int, out: Path) -> list[dict]:
    """BC on each task's medium demonstrations, one pre-training run per seed; resumable.

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
                pretrain(PretrainConfig(dataset=str(data), steps=steps, seed=seed), run)
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


def bench_critic_entropy(tasks: list[str], repeats: int, out: Path) -> list[dict]:
    """Median wall time of one SWFP critic update with ``critic_entropy="none"`` vs ``"exact"``.

    ``"exact"`` needs the cascade's log-density of every target action: K Jacobians per sample.
    The networks have each task's default sizes (base flow K = 10, batch 256); weights are random,
    which does not change the cost. Medians over ``repeats`` updates after 5 warm-up updates.
    """
    import statistics

    import torch

    from swfp.buffer import Batch
    from swfp.cascade import Cascade
    from swfp.critic import Critic, CriticConfig
    from swfp.envs import env_dims
    from swfp.flow import FlowConfig, FlowPolicy

    rows = []
    for task in tasks:
        obs_dim, act_dim = env_dims(task)
        cascade = Cascade(FlowPolicy(obs_dim, act_dim, FlowConfig(hidden_dims=task_spec(task).hidden_dims)))
        critic = Critic(obs_dim, act_dim, CriticConfig())
        batch = Batch(torch.randn(256, obs_dim), torch.rand(256, act_dim) * 2 - 1, torch.randn(256),
                      torch.randn(256, obs_dim), torch.zeros(256))
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
    write_run_metadata(out, {"tasks": tasks, "repeats": repeats}, seed=0, kind="bench-critic-entropy")
    write_rows_csv(out / "critic_entropy.csv", rows)
    lines = [f"SWFP critic update (batch 256, K = 10, {os.cpu_count()} cores, torch threads "
             f"{torch.get_num_threads()}), median of {repeats}", "",
             "| task | action dim | entropy none (ms) | entropy exact (ms) | exact / none |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['task']} | {r['act_dim']} | {r['none_ms']:.1f} | {r['exact_ms']:.1f} | {r['exact_over_none']:.1f} |"
              for r in rows]
    atomic_write_text(out / "critic_entropy.md", "\n".join(lines) + "\n")
    return rows
