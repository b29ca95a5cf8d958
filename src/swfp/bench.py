"""Benchmarks: measured speed on this machine, written as CSV and a Markdown table.

``swfp bench envs`` times environment stepping with Gymnasium's synchronous and asynchronous
vector environments, the measurement behind :func:`swfp.envs.make_vector_env` being synchronous.
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
    header = list(rows[0])
    atomic_write_text(out / "envs.csv", "\n".join([",".join(header)] + [
        ",".join(f"{r[h]:.3f}" if isinstance(r[h], float) else str(r[h]) for h in header) for r in rows]) + "\n")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [f"Vector-env stepping, {task_id}, random actions, {steps} vector steps ({machine})", "",
             "| envs | sync steps/s | async steps/s | async / sync |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['num_envs']} | {r['sync_steps_per_s']:.0f} | {r['async_steps_per_s']:.0f} | "
              f"{r['async_over_sync']:.2f} |" for r in rows]
    atomic_write_text(out / "envs.md", "\n".join(lines) + "\n")
    return rows
