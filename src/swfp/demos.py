"""D4RL-style demonstration datasets from a trained SAC expert: ``expert``, ``medium`` and ``medium-replay``.

As D4RL, the ``expert`` and ``medium`` policies act **stochastically** (their own Gaussian noise, squashed
by tanh): the data then covers the neighbourhood of the policy's trajectories rather than a single
deterministic path. Episode ``i`` is reset with seed ``seed + i`` and all episodes run side by side with
one batched actor call per step (as :func:`swfp.evaluate.evaluate`). The actor's noise comes from torch's
global RNG seeded with ``seed`` inside :func:`torch.random.fork_rng`, so the same arguments give a
bit-identical dataset and the caller's RNG state is restored afterwards.

``medium-replay`` is not rolled out: as D4RL's, it is every transition the expert's training run collected
until its medium snapshot (:func:`medium_replay`), read from the run's replay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from swfp import __version__
from swfp.buffer import ReplayBuffer
from swfp.data import Dataset, build_dataset, action_bounds, denormalize_actions
from swfp.envs import env_dims, make_env, task_spec
from swfp.expert import QUALITIES, load_expert, recorded_replay
from swfp.runio import CheckpointError, read_json

ALL_QUALITIES = (*QUALITIES, "medium-replay")


def generate_demos(task_id: str, expert_dir, quality: str, episodes: int, seed: int) -> Dataset:
    """Roll out the ``quality`` actor of ``expert_dir`` for ``episodes`` episodes of ``task_id``.

    Episodes are stored one after another; actions in environment units, ``terminals`` =
    ``terminated`` and ``timeouts`` = ``truncated`` of the step that ended the episode.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    with torch.random.fork_rng(devices=[]):  # building the actor draws initial weights
        policy, info = load_expert(expert_dir, quality)
    obs_dim, act_dim = env_dims(task_id)
    check_expert_task(expert_dir, policy.task_id, task_id)
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
            actions = np.clip(policy.normalized_actions(obs[idx]), -1.0, 1.0)  # as make_env clips
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
                "policy_step": info[quality]["step"], "policy_return": info[quality]["evaluation"]["return_mean"],
                "swfp_version": __version__}
    return build_dataset(fields, metadata).validate(task_id)


def check_expert_task(expert_dir, expert_task: str, task_id: str) -> None:
    if expert_task != task_id:
        raise CheckpointError(f"the expert in {expert_dir} was trained on {expert_task!r}, not on {task_id!r}; use an "
                              f"expert trained on {task_id!r}")


def medium_replay(task_id: str, expert_dir) -> Dataset:
    """D4RL's medium-replay: every transition the expert run ``expert_dir`` collected up to its medium
    snapshot's env step (random warm-up actions included), in collection order, actions in env units.

    D4RL's is "all samples in the replay buffer observed during training until the policy reaches the
    medium level of performance" (Fu et al., 2020). The run keeps them in its final ``checkpoint.pt``
    (:mod:`swfp.expert`); ``expert.json`` names the medium snapshot.
    """
    info = read_json(Path(expert_dir) / "expert.json")
    check_expert_task(expert_dir, info.get("task"), task_id)
    step = info["medium"]["step"]
    metadata = {"task": task_id, "source": "swfp-expert-replay", "expert_dir": str(Path(expert_dir)),
                "quality": "medium-replay", "env_steps": step, "policy_step": step,
                "policy_return": info["medium"]["evaluation"]["return_mean"], "swfp_version": __version__}
    return replay_dataset(recorded_replay(expert_dir), step, task_id, metadata)


def replay_dataset(replay: ReplayBuffer, steps: int, task_id: str, metadata: dict) -> Dataset:
    """The first ``steps`` transitions of a single environment's replay, in order, as a dataset.

    The replay keeps ``terminated`` only; an episode that ended otherwise (the time limit) is found where a
    row's ``s'`` is not the next row's ``s`` (:meth:`~swfp.buffer.ReplayBuffer.continues`) and becomes a
    timeout, as does the last row when ``steps`` cuts an episode short.
    """
    if replay.stride != 1:
        raise ValueError(f"the replay interleaves {replay.stride} environments; a dataset needs one environment's")
    if replay.size == replay.capacity and replay.position != 0:
        raise ValueError("the replay has wrapped around and lost its first transitions")
    if not 1 <= steps <= len(replay):
        raise ValueError(f"the replay holds {len(replay)} transitions, not the {steps} asked for")
    terminals = replay.terminals[:steps] > 0
    ends = ~replay.continues()[:steps]
    ends[-1] = True
    low, high = action_bounds(task_id)
    fields = {"observations": replay.observations[:steps], "next_observations": replay.next_observations[:steps],
              "actions": denormalize_actions(replay.actions[:steps], low, high), "rewards": replay.rewards[:steps],
              "terminals": terminals, "timeouts": ends & ~terminals}
    return build_dataset(fields, metadata).validate(task_id)
