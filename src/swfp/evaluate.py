"""Policy evaluation: full episodes on fresh environments, batched across episodes.

Episode ``i`` is reset with seed ``seed + i``, so two evaluations with the same seed see the same
initial states and (for a deterministic policy) give the same returns. All episodes run side by
side and the policy is called once per step on the batch of still-running episodes. A policy
that returns an action chunk of ``H`` steps has it executed open-loop before it is asked again.

:func:`evaluate_seeded` is the one evaluator of a policy object, used by fine-tuning and
pre-training runs, ``swfp eval`` and ``swfp bench report --rescore``: it also seeds the policy's
own noise with ``seed``, so a stochastic evaluation is reproduced by the same ``(episodes, seed)``,
which every run records in its ``eval.csv`` (:func:`recorded_evaluation`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from swfp.envs import make_env, success_from_info, task_spec
from swfp.logger import read_csv
from swfp.runio import CheckpointError, atomic_write

# action_fn(observations (B, obs_dim)) -> actions (B, H * act_dim) in [-1, 1]
ActionFn = Callable[[np.ndarray], np.ndarray]


def interquartile_mean(values: np.ndarray) -> float:
    """Mean of the middle 50% of values (``scipy.stats.trim_mean(x, 0.25)``, as rliable's IQM)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        return float("nan")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def mean_half_width(values: np.ndarray) -> float:
    """Half-width of the normal 95 % interval of the mean, ``1.96·s/√n`` (``nan`` for a single value)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return 1.96 * float(values.std(ddof=1)) / values.size ** 0.5 if values.size > 1 else float("nan")


def success_interval(successes: list[bool], z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95 % score interval of a success rate from ``n`` episodes (Wilson, 1927): unlike the normal
    interval it stays inside [0, 1] and is not empty at 0 % or 100 %, which sparse tasks often read."""
    n, rate = len(successes), float(np.mean(successes))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    successes: list[bool] | None

    def summary(self) -> dict:
        return {
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "return_iqm": interquartile_mean(self.returns),
            "return_min": float(self.returns.min()),
            "return_max": float(self.returns.max()),
            "episodes": int(self.returns.size),
            "episode_length_mean": float(self.lengths.mean()),
            "success_rate": None if self.successes is None else float(np.mean(self.successes)),
            "success_interval": None if self.successes is None else list(success_interval(self.successes)),
            "returns": [float(r) for r in self.returns],
        }


def evaluate(action_fn: ActionFn, task_id: str, episodes: int, seed: int, action_chunk: int = 1,
             video_dir: Path | None = None, max_episode_steps: int | None = None) -> EvalResult:
    """Run ``episodes`` episodes of ``task_id`` with ``action_fn`` and return per-episode results.

    With ``video_dir``, the first episode is rendered offscreen (MuJoCo EGL unless ``MUJOCO_GL``
    says otherwise) and written as ``episode_0.mp4``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    steps_limit = max_episode_steps or task_spec(task_id).max_episode_steps
    if video_dir is not None:
        make_video_dir(Path(video_dir))
        os.environ.setdefault("MUJOCO_GL", "egl")
    envs = [make_env(task_id, render_mode="rgb_array" if (video_dir is not None and i == 0) else None,
                     max_episode_steps=steps_limit) for i in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    act_dim = envs[0].action_space.shape[0]
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    successes: list[bool | None] = [None] * episodes
    running = np.ones(episodes, dtype=bool)
    frames: list[np.ndarray] = []
    if video_dir is not None:
        frames.append(envs[0].render())
    while running.any():
        idx = np.flatnonzero(running)
        chunk = np.asarray(action_fn(obs[idx]), dtype=np.float32).reshape(len(idx), action_chunk, act_dim)
        for h in range(action_chunk):
            for j, i in enumerate(idx):
                if not running[i]:
                    continue
                next_obs, reward, terminated, truncated, info = envs[i].step(chunk[j, h])
                returns[i] += reward
                lengths[i] += 1
                obs[i] = next_obs
                success = success_from_info(info)
                if success is not None:
                    successes[i] = bool(successes[i]) or success
                if video_dir is not None and i == 0:
                    frames.append(envs[0].render())
                if terminated or truncated:
                    running[i] = False
    for env in envs:
        env.close()
    if video_dir is not None:
        write_video(Path(video_dir) / "episode_0.mp4", frames, fps=envs[0].metadata.get("render_fps", 30))
    defines_success = any(s is not None for s in successes)
    return EvalResult(returns, lengths, [bool(s) for s in successes] if defines_success else None)


class ActingPolicy(Protocol):
    """What :func:`evaluate_seeded` evaluates: any loaded policy (:class:`swfp.policy.EnvPolicy`) or a
    method's acting policy during a run."""

    action_chunk: int
    device: torch.device

    def normalized_actions(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray: ...


def evaluate_seeded(policy: ActingPolicy, task_id: str, episodes: int, seed: int, deterministic: bool = False,
                    video_dir: Path | None = None) -> EvalResult:
    """Evaluate ``policy`` on episodes seeded ``seed + i`` with its noise drawn from torch's generator seeded
    with ``seed``, inside :func:`torch.random.fork_rng`: the caller's random streams (a run's training) are
    left as they were, and the same ``(episodes, seed)`` gives the same returns for the same weights.

    Bit-for-bit equality also needs the same machine, device and torch thread count (``OMP_NUM_THREADS``):
    the reductions inside a matrix product depend on them, and over a long episode a last-bit difference in
    an action can grow into another trajectory. A policy on CUDA draws its noise from that device's generator,
    which is forked (and seeded) too.
    """
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return evaluate(lambda o: policy.normalized_actions(o, deterministic=deterministic), task_id, episodes,
                        seed=seed, action_chunk=policy.action_chunk, video_dir=video_dir)


def seed_columns(episodes: int, seed: int) -> dict[str, int]:
    """The columns an ``eval.csv`` row records its evaluation's seeds in (read by :func:`recorded_evaluation`)."""
    return {"eval_episodes": episodes, "eval_seed": seed}


def recorded_evaluation(run_dir: Path) -> dict[str, float]:
    """The last row of a run's ``eval.csv``: its env step, returns and the ``eval_episodes`` / ``eval_seed``
    that :func:`evaluate_seeded` reproduces it with."""
    path = Path(run_dir) / "eval.csv"
    rows = read_csv(path) if path.is_file() else []
    if not rows:
        raise CheckpointError(f"{path} is missing or empty: the run has not evaluated its policy yet")
    last = rows[-1]
    if last.get("eval_seed") is None or last.get("eval_episodes") is None:
        raise CheckpointError(f"{path} records no evaluation seeds (written before swfp recorded them, and its "
                              "policy noise came from the training's random stream): evaluate with --episodes "
                              "and --seed instead")
    return last


def make_video_dir(video_dir: Path) -> None:
    """Create ``video_dir`` before any episode runs: a path that cannot hold the video fails at once, saying
    which directory and why, rather than as a bare ``[Errno 20]`` once the whole evaluation is done."""
    try:
        video_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        file_in_the_way = next((p for p in (video_dir, *video_dir.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{file_in_the_way} is a file, not a directory" if file_in_the_way else exc.strerror
        raise ValueError(f"cannot create the video directory {video_dir}: {reason}") from exc


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write RGB frames as an H.264 MP4 (imageio-ffmpeg), atomically."""
    import imageio.v2 as imageio

    def write(tmp):
        with imageio.get_writer(tmp, format="FFMPEG", fps=int(round(fps)), codec="libx264",
                                macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(frame)
    atomic_write(Path(path), write)
    return Path(path)
