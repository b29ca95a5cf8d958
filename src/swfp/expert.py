"""Training Gaussian SAC experts, and loading them to generate demonstrations.

An expert directory holds ``expert.json`` (task, network sizes, evaluation history, the command
that made it) and two actors in safetensors: ``expert.safetensors`` (the final policy) and
``medium.safetensors`` (the training snapshot whose evaluation return is closest to
``MEDIUM_FRACTION`` of the final one, as D4RL's "medium" level: a policy partway through training,
roughly a third to a half of the expert's return).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swfp.algorithms.sac import SAC, GaussianActor, SACConfig
from swfp.buffer import ReplayBuffer
from swfp.envs import env_dims, make_vector_env, step_vector_env
from swfp.evaluate import evaluate
from swfp.logger import MetricLogger, make_progress, plot_learning_curve
from swfp.runio import (CheckpointError, atomic_write_json, load_state_strict, load_tensors, read_json,
                        save_tensors, write_run_metadata)

MEDIUM_FRACTION = 0.4
QUALITIES = ("expert", "medium")


@dataclass
class ExpertConfig:
    task: str
    env_steps: int = 300_000
    seed: int = 0
    learning_starts: int = 5_000
    eval_every: int = 10_000
    eval_episodes: int = 5
    sac: SACConfig = field(default_factory=SACConfig)

    def __post_init__(self):
        if isinstance(self.sac, dict):
            self.sac = SACConfig(**self.sac)
        if self.env_steps < 1 or self.eval_every < 1 or self.eval_episodes < 1 or self.learning_starts < 0:
            raise ValueError("env_steps, eval_every and eval_episodes must be >= 1, learning_starts >= 0")


def train_expert(config: ExpertConfig, out: Path) -> dict:
    """Train SAC on ``config.task`` for ``config.env_steps`` steps; write the expert directory."""
    out = Path(out)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    obs_dim, act_dim = env_dims(config.task)
    agent = SAC(obs_dim, act_dim, config.sac)
    buffer = ReplayBuffer(obs_dim, act_dim, capacity=config.env_steps)
    venv = make_vector_env(config.task, num_envs=1, seed=config.seed)
    write_run_metadata(out, config, config.seed, kind="expert")
    logger = MetricLogger(out)
    obs, _ = venv.reset(seed=config.seed)
    snapshots: list[dict] = []
    episode_return, last_return = 0.0, float("nan")
    start = time.time()
    with make_progress() as progress:
        bar = progress.add_task(f"SAC expert {config.task}", total=config.env_steps, status="")
        for step in range(1, config.env_steps + 1):
            if step <= config.learning_starts:
                actions = venv.action_space.sample()
            else:
                actions = agent.actor.act(obs, deterministic=False)
            next_obs, reward, terminated, truncated, real_next, _ = step_vector_env(venv, actions)
            buffer.add(obs, actions, reward, real_next, terminated)
            obs = next_obs
            episode_return += float(reward[0])
            if terminated[0] or truncated[0]:
                last_return, episode_return = episode_return, 0.0
            if step > config.learning_starts:
                metrics = agent.update(buffer.sample(config.sac.batch_size, rng))
                if step % 1000 == 0:
                    logger.log("train", step, {**metrics, "episode_return": last_return})
            if step % config.eval_every == 0 or step == config.env_steps:
                result = evaluate(lambda o: agent.actor.act(o, deterministic=True), config.task,
                                  config.eval_episodes, seed=10_000 + step)
                mean = float(result.returns.mean())
                snapshots.append({"step": step, "return_mean": mean,
                                  "actor": copy.deepcopy(agent.actor.state_dict())})
                logger.log("eval", step, {"return_mean": mean, "return_std": float(result.returns.std()),
                                          "steps_per_second": step / (time.time() - start)})
                progress.update(bar, status=f"eval return {mean:8.1f}")
            progress.advance(bar)
    logger.close()
    venv.close()
    medium = select_medium(snapshots)
    final = snapshots[-1]
    save_tensors(out / "expert.safetensors", final["actor"])
    save_tensors(out / "medium.safetensors", medium["actor"])
    info = {
        "task": config.task, "obs_dim": obs_dim, "act_dim": act_dim, "hidden_dims": list(config.sac.hidden_dims),
        "seed": config.seed, "env_steps": config.env_steps,
        "expert": {"step": final["step"], "eval_return": final["return_mean"]},
        "medium": {"step": medium["step"], "eval_return": medium["return_mean"]},
        "history": [{"step": s["step"], "return_mean": s["return_mean"]} for s in snapshots],
        "train_seconds": round(time.time() - start, 1),
    }
    atomic_write_json(out / "expert.json", info)
    plot_learning_curve(out, [("eval", "return_mean")], f"SAC expert on {config.task}")
    return info


def select_medium(snapshots: list[dict]) -> dict:
    """The snapshot whose return is closest to ``MEDIUM_FRACTION`` × the final return, preferring
    those inside D4RL's medium band [1/3, 1/2] of it (before the final snapshot)."""
    final = snapshots[-1]["return_mean"]
    candidates = snapshots[:-1] or snapshots
    in_band = [s for s in candidates if final / 3 <= s["return_mean"] <= final / 2]
    pool = in_band or candidates
    return min(pool, key=lambda s: abs(s["return_mean"] - MEDIUM_FRACTION * final))


def load_expert(expert_dir: Path, quality: str) -> tuple[GaussianActor, dict]:
    """The actor of ``quality`` ("expert" or "medium") and the directory's ``expert.json``."""
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; choose one of {QUALITIES}")
    expert_dir = Path(expert_dir)
    info = read_json(expert_dir / "expert.json")
    try:
        actor = GaussianActor(info["obs_dim"], info["act_dim"], tuple(info["hidden_dims"]))
    except KeyError as exc:
        raise CheckpointError(f"{expert_dir / 'expert.json'} lacks {exc}; it is not an expert directory") from exc
    path = expert_dir / f"{quality}.safetensors"
    load_state_strict(actor, load_tensors(path), path)
    return actor.eval(), info

