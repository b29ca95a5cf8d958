"""Tasks: Gymnasium environments with actions normalised to ``[-1, 1]`` and per-task defaults.

Any Gymnasium id works, including the ``module:Env-vN`` form (Gymnasium imports ``module`` first,
so users can bring their own registered environments). The built-in MuJoCo locomotion tasks get
tuned defaults; any other id with a ``Box`` action space gets sensible generic ones.

Conventions used everywhere in the library:

* The policy acts in the normalised box ``[-1, 1]^d``; :func:`make_env` wraps the environment with
  an affine rescale so the environment sees its own units. Actions are clipped to the box at
  execution only, never inside the flow (clipping would break the exact log-density).
* Time-limit truncation is **not** termination: only ``terminated`` stops bootstrapping.
* Vector environments are synchronous: on 2 cores the per-step IPC of ``AsyncVectorEnv`` costs
  more than the MuJoCo step it parallelises (``swfp bench envs`` measures both).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import warnings
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv


if "swfp/QuadraticBandit-v0" not in gym.registry:
    gym.register("swfp/QuadraticBandit-v0", entry_point="swfp.bandit:QuadraticBandit", max_episode_steps=1)


class TaskError(ValueError):
    """A task id that cannot be made, or whose spaces the library does not support."""


@dataclass(frozen=True)
class TaskSpec:
    """Per-task defaults. ``hidden_dims`` size the flow's velocity network; ``expert_env_steps`` is the budget of
    ``swfp expert``: the one each shipped expert of issue 37 was trained with (docs "Benchmarks"; Ant-v5's and
    Humanoid-v5's are not measured yet). A friendly ``task_id`` may stand for the Gymnasium id ``gym_id``,
    registered when the module ``requires`` is imported (``extra`` names the pip extra that installs it)."""

    task_id: str
    max_episode_steps: int = 1000
    eval_episodes: int = 10
    action_chunk: int = 1
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    expert_env_steps: int = 300_000
    gym_id: str | None = None
    requires: str | None = None
    extra: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BUILTIN_TASKS: dict[str, TaskSpec] = {
    "Hopper-v5": TaskSpec("Hopper-v5", expert_env_steps=600_000),
    "Walker2d-v5": TaskSpec("Walker2d-v5", expert_env_steps=700_000),
    "HalfCheetah-v5": TaskSpec("HalfCheetah-v5", expert_env_steps=450_000),
    "Ant-v5": TaskSpec("Ant-v5", expert_env_steps=1_000_000),
    "Humanoid-v5": TaskSpec("Humanoid-v5", hidden_dims=(512, 512, 512), expert_env_steps=1_000_000),
    "swfp/QuadraticBandit-v0": TaskSpec("swfp/QuadraticBandit-v0", max_episode_steps=1, eval_episodes=64,
                                        hidden_dims=(64, 64), expert_env_steps=5_000),
}


def _ogbench_cube(cubes: str, task: int, steps: int) -> TaskSpec:
    """OGBench's single-task cube manipulation (Park et al., 2024, arXiv 2410.20092): a UR5e arm with a
    Robotiq gripper moves ``cubes`` cubes to the goal of evaluation task ``task`` (1–5). The reward is
    OGBench's sparse one, (number of cubes at their goal) − (number of cubes): 0 on success, negative
    otherwise; the episode terminates on success and ``info["success"]`` reports it. Actions are
    chunked by H = 5, executed open-loop, as Q-chunking does on these tasks (Li et al., 2025)."""
    return TaskSpec(f"cube-{cubes}-task{task}", max_episode_steps=steps, eval_episodes=50, action_chunk=5,
                    expert_env_steps=0, gym_id=f"cube-{cubes}-singletask-task{task}-v0",
                    requires="ogbench.manipspace", extra="manipulation")


BUILTIN_TASKS.update({spec.task_id: spec for spec in
                      [_ogbench_cube("single", task, 200) for task in range(1, 6)]
                      + [_ogbench_cube("double", task, 500) for task in range(1, 6)]})


def task_spec(task_id: str) -> TaskSpec:
    """Defaults for ``task_id``: the tuned ones for built-in tasks, generic ones otherwise.

    For an unknown id the episode length comes from the Gymnasium registration (1000 if unset).
    Raises :class:`TaskError` if the id cannot be made or has no ``Box`` action space.
    """
    if task_id in BUILTIN_TASKS:
        return BUILTIN_TASKS[task_id]
    env = make_raw_env(task_id)
    try:
        check_spaces(task_id, env)
        steps = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 1000
    finally:
        env.close()
    return TaskSpec(task_id, max_episode_steps=int(steps))


def make_raw_env(task_id: str, **kwargs) -> gym.Env:
    """The Gymnasium environment of ``task_id`` (a friendly built-in id is made from its ``gym_id``)."""
    spec = BUILTIN_TASKS.get(task_id)
    if spec is not None and spec.requires:
        os.environ.setdefault("MUJOCO_GL", "egl")  # dm_control, imported by OGBench, would try a display first
        try:
            importlib.import_module(spec.requires)
        except ImportError as exc:
            raise TaskError(f"task {task_id!r} needs the {spec.requires.split('.')[0]} package ({exc}); install it "
                            f"with: pip install -e \".[{spec.extra}]\"") from exc
        # OGBench builds its action space with float64 bounds at every reset, and Gymnasium warns each time
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
    try:
        return gym.make(spec.gym_id if spec is not None and spec.gym_id else task_id, **kwargs)
    except (gym.error.Error, ModuleNotFoundError, ImportError, AttributeError) as exc:
        raise TaskError(
            f"unknown task {task_id!r}: {exc}. Use a registered Gymnasium id such as 'Hopper-v5', "
            "or 'my_module:MyEnv-v0' to import and register your own environment first."
        ) from exc


def check_spaces(task_id: str, env: gym.Env) -> None:
    if not isinstance(env.action_space, gym.spaces.Box):
        raise TaskError(f"task {task_id!r} has a {type(env.action_space).__name__} action space; "
                        "swfp needs a continuous Box action space")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise TaskError(f"task {task_id!r} has observation space {env.observation_space}; "
                        "swfp needs a flat Box observation (wrap dict observations with FlattenObservation)")
    if not np.all(np.isfinite(env.action_space.low)) or not np.all(np.isfinite(env.action_space.high)):
        raise TaskError(f"task {task_id!r} has an unbounded action space; swfp needs finite bounds to normalise")


def make_env(task_id: str, seed: int | None = None, render_mode: str | None = None,
             max_episode_steps: int | None = None) -> gym.Env:
    """One environment whose actions are in ``[-1, 1]^d`` (rescaled affinely, then clipped)."""
    kwargs = {"render_mode": render_mode} if render_mode else {}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    env = make_raw_env(task_id, **kwargs)
    check_spaces(task_id, env)
    ones = np.ones(env.action_space.shape, dtype=np.float32)
    env = gym.wrappers.RescaleAction(env, -ones, ones)
    # clip, keeping the advertised space [-1, 1] (gymnasium's ClipAction widens it to ±inf)
    env = gym.wrappers.TransformAction(env, lambda a: np.clip(a, -1.0, 1.0),
                                       gym.spaces.Box(-ones, ones, dtype=np.float32))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(task_id: str, num_envs: int, seed: int) -> SyncVectorEnv:
    """``num_envs`` synchronous copies with same-step autoreset (``info['final_obs']`` holds the
    true last observation of an episode that ended, needed for correct bootstrapping)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    spec = task_spec(task_id)
    fns = [lambda: make_env(task_id, max_episode_steps=spec.max_episode_steps) for _ in range(num_envs)]
    venv = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    venv.action_space.seed(seed)  # the caller's venv.reset(seed=...) gives the first observations
    return venv


def env_dims(task_id: str) -> tuple[int, int]:
    """(observation size, action size) of a task."""
    env = make_env(task_id)
    try:
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    finally:
        env.close()


def step_vector_env(venv: SyncVectorEnv, actions: np.ndarray):
    """Step and return ``(next_obs, reward, terminated, truncated, real_next_obs, info)``.

    ``real_next_obs`` replaces the reset observation of finished sub-environments by their true
    final observation, so a transition ``(s, a, r, s')`` is always correct for the replay buffer.
    """
    next_obs, reward, terminated, truncated, info = venv.step(np.clip(actions, -1.0, 1.0))
    real_next_obs = next_obs.copy()
    if "_final_obs" in info:
        for i in np.flatnonzero(info["_final_obs"]):
            real_next_obs[i] = info["final_obs"][i]
    return next_obs, reward, terminated, truncated, real_next_obs, info


def success_from_info(info: dict) -> bool | None:
    """Whether a task reported success in ``info`` (``success`` or ``is_success``); ``None`` if it
    does not define success."""
    for key in ("success", "is_success"):
        if key in info:
            return bool(np.asarray(info[key]).any())
    return None
