"""D4RL-style demonstration datasets from a trained SAC expert.

As D4RL, the expert acts **stochastically** (its own Gaussian noise, squashed by tanh): the data
then covers the neighbourhood of the expert's trajectories rather than a single deterministic path.
Episode ``i`` is reset with seed ``seed + i`` and all episodes run side by side with one batched
actor call per step (as :func:`swfp.evaluate.evaluate`). The actor's noise comes from torch's
global RNG seeded with ``seed`` inside :func:`torch.random.fork_rng`, so the same arguments give a
bit-identical dataset and the caller's RNG state is restored afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from swfp import __version__
from swfp.data import Dataset, build_dataset, action_bounds, denormalize_actions
from swfp.envs import env_dims, make_env, task_spec
from swfp.expert import load_expert
from swfp.runio import CheckpointError


def generate_demos(task_id: str, expert_dir, quality: str, episodes: int, seed: int) -> Dataset:
    """Roll out the ``quality`` actor of ``expert_dir`` for ``episodes`` episodes of ``task_id``.

    Episodes are stored one after another; actions in environment units, ``terminals`` =
    ``terminated`` and ``timeouts`` = ``truncated`` of the step that ended the episode.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    with torch.random.fork_rng(devices=[]):  # building the actor draws initial weights
        actor, info = load_expert(expert_dir, quality)
    obs_dim, act_dim = env_dims(task_id)
    if info.get("task") != task_id or (info["obs_dim"], info["act_dim"]) != (obs_dim, act_dim):
        raise CheckpointError(f"the expert in {expert_dir} was trained on {info.get('task')!r} "
                              f"(obs {info['obs_dim']}, act {info['act_dim']}), not on {task_id!r} "
                              f"(obs {obs_dim}, act {act_dim}); use an expert trained on {task_id!r}")
    low, high = action_bounds(task_id)
    limit = task_spec(task_id).max_episode_steps
    envs = [make_env(task_id, max_episode_steps=limit) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)

    # Per-episode buffers of the longest possible episode, trimmed to each episode's length below.
    buf_obs = np.zeros((episodes, limit, obs_dim), np.float32)
    buf_next = np.zeros((episodes, limit, obs_dim), np.float32)
    buf_act = np.zeros((episodes, limit, act_dim), np.float32)
    buf_rew = np.zeros((episodes, limit), np.float32)
    buf_term = np.zeros((episodes, limit), bool)
    buf_trunc = np.zeros((episodes, limit), bool)
    lengths = np.zeros(episodes, np.int64)
    returns = np.zeros(episodes)
    running = np.ones(episodes, bool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while running.any():
            idx = np.flatnonzero(running)
            actions = np.clip(actor.act(obs[idx], deterministic=False), -1.0, 1.0)  # as make_env clips
            for j, i in enumerate(idx):
                next_obs, reward, terminated, truncated, _ = envs[i].step(actions[j])
                t = lengths[i]
                buf_obs[i, t], buf_act[i, t], buf_next[i, t] = obs[i], actions[j], next_obs
                buf_rew[i, t], buf_term[i, t], buf_trunc[i, t] = reward, terminated, truncated
                lengths[i] += 1
                returns[i] += reward
                obs[i] = next_obs
                if terminated or truncated:
                    running[i] = False
    for env in envs:
        env.close()

    def stacked(buf):
        return np.concatenate([buf[i, :lengths[i]] for i in range(episodes)])

    fields = {"observations": stacked(buf_obs), "actions": denormalize_actions(stacked(buf_act), low, high),
              "rewards": stacked(buf_rew), "next_observations": stacked(buf_next),
              "terminals": stacked(buf_term), "timeouts": stacked(buf_trunc)}
    metadata = {"task": task_id, "source": "swfp-expert", "expert_dir": str(Path(expert_dir)), "quality": quality,
                "seed": seed, "episodes": episodes, "episode_returns": [float(r) for r in returns],
                "expert_eval_return": info[quality]["eval_return"], "swfp_version": __version__}
    return build_dataset(fields, metadata).validate(task_id)
