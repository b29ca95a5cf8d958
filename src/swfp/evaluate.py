"""Policy evaluation: full episodes on fresh environments, batched across episodes.

Episode ``i`` is reset with seed ``seed + i``, so two evaluations with the same seed see the same
initial states and (for a deterministic policy) give the same returns. All episodes run side by
side and the policy is called once per step on the batch of still-running episodes. A policy
that returns an action chunk of ``H`` steps has it executed open-loop before it is asked again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from swfp.envs import make_env, success_from_info, task_spec
from swfp.runio import atomic_write

# action_fn(observations (B, obs_dim)) -> actions (B, H * act_dim) in [-1, 1]
ActionFn = Callable[[np.ndarray], np.ndarray]


def interquartile_mean(values: np.ndarray) -> float:
    """Mean of the middle 50% of values (``scipy.stats.trim_mean(x, 0.25)``, as rliable's IQM)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        return float("nan")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


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
