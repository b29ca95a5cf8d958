"""Demonstrations for OGBench's cube tasks, made here by OGBench's own scripted oracles.

OGBench's datasets are downloads, which swfp never makes at run time; its package ships the scripted
oracles they were made with (``data_gen_scripts/generate_manipspace.py`` in seohongpark/ogbench drives
them). :func:`oracle_demonstrations` drives the same non-Markovian plan oracle, with OGBench's noise
settings (noise 0.1, smoothing 0.5), to write one of two kinds of data in swfp's format:

* ``play`` — task-agnostic, as OGBench's ``cube-*-play`` datasets: the environment in data-collection
  mode places the cubes at random and the oracle carries one cube after another to random targets (a new
  target as soon as one is reached; on ``cube-double`` a target on top of the other cube with probability
  ``U(0, 0.25)``, as OGBench), for ``episode_steps`` steps (OGBench's 1001). Rewards are then labelled
  for the task as OGBench labels its single-task datasets (``relabel_utils.relabel_dataset``): from the
  state each action was taken in, ``r = (cubes within 0.04 of the task's goal) − (cubes)``, and the row
  is terminal where every cube is at its goal (the single-task episode would end there).
* ``task`` — task-directed: the single-task environment itself, from its evaluation start, the oracle
  carrying each cube that is not at the task's goal to it, in order; an episode ends at success
  (terminated) or at the time limit (truncated), exactly as an evaluation episode does.

Episode ``i`` is reset with ``seed + i``; the oracles draw their noise from NumPy's global generator
(as OGBench's script), which is seeded with ``seed`` here and restored afterwards, so the same arguments
give the same dataset.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from swfp import __version__
from swfp.data import FIELDS, Dataset, build_dataset
from swfp.envs import BUILTIN_TASKS, TaskError, make_raw_env

KINDS = ("play", "task")
PLAY_EPISODE_STEPS = 1001  # OGBench's cube-*-play episodes
GOAL_TOLERANCE = 0.04  # OGBench's cube success radius (CubeEnv._compute_successes)
ORACLE_NOISE, ORACLE_NOISE_SMOOTHING = 0.1, 0.5  # generate_manipspace.py's defaults for play data
_QPOS_CUBES, _QPOS_PER_CUBE = 14, 7  # the cubes' free joints follow the arm's 14 joints in qpos


def is_oracle_task(task_id: str) -> bool:
    """Whether ``task_id`` is one of OGBench's cube tasks, whose demonstrations its oracles make."""
    spec = BUILTIN_TASKS.get(task_id)
    return spec is not None and spec.requires == "ogbench.manipspace"


def _cube_positions(qpos: np.ndarray, cubes: int) -> np.ndarray:
    return np.stack([qpos[_QPOS_CUBES + i * _QPOS_PER_CUBE:_QPOS_CUBES + i * _QPOS_PER_CUBE + 3]
                     for i in range(cubes)])


def _at_goal(qpos: np.ndarray, goals: np.ndarray) -> np.ndarray:
    """Which cubes lie within :data:`GOAL_TOLERANCE` of their goal, in the state ``qpos``."""
    return np.linalg.norm(_cube_positions(qpos, len(goals)) - goals, axis=-1) <= GOAL_TOLERANCE


def _with_target(info: dict, cube: int, goals: np.ndarray) -> dict:
    """``info`` with the target fields the oracle reads, which OGBench sets only in data-collection mode."""
    return {**info, "privileged/target_block": cube, "privileged/target_block_pos": goals[cube].copy(),
            "privileged/target_block_yaw": np.zeros(1)}


def oracle_demonstrations(task_id: str, kind: str, episodes: int, seed: int,
                          episode_steps: int | None = None) -> Dataset:
    """``episodes`` episodes of OGBench's plan oracle on the cube task ``task_id`` (see the module docstring).

    ``episode_steps`` is the length of a ``play`` episode (default OGBench's 1001); ``task`` episodes last
    until success or the task's time limit. Actions are in the environment's units ([-1, 1] here).
    """
    if not is_oracle_task(task_id):
        oracle_tasks = ", ".join(t for t in BUILTIN_TASKS if is_oracle_task(t))
        raise TaskError(f"task {task_id!r} has no scripted oracle; oracle demonstrations exist for {oracle_tasks}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind of oracle demonstrations {kind!r}; choose one of {', '.join(KINDS)}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if kind == "task" and episode_steps is not None:
        raise ValueError("--episode-steps sets the length of play episodes; task episodes last until success or "
                         "the task's time limit")
    if kind == "play":
        episode_steps = episode_steps or PLAY_EPISODE_STEPS
    task_env = make_raw_env(task_id)
    task_env.reset(seed=seed)
    goals = np.asarray(task_env.unwrapped.cur_task_info["goal_xyzs"], dtype=np.float64)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        if kind == "play":  # OGBench's goal-conditioned environment of the same cubes, in data-collection mode
            env = gym.make(BUILTIN_TASKS[task_id].gym_id.split("-singletask")[0] + "-v0", terminate_at_goal=False,
                           mode="data_collection", max_episode_steps=episode_steps)
            rows, successes = _play(env, goals, episodes, seed)
            env.close()
        else:
            rows, successes = _task(task_env, goals, episodes, seed)
    finally:
        np.random.set_state(state)
        task_env.close()
    fields = {name: np.asarray(values, dtype=bool if name in ("terminals", "timeouts") else np.float32)
              for name, values in rows.items()}
    metadata = {"task": task_id, "source": "ogbench-oracle", "quality": kind, "seed": seed, "episodes": episodes,
                "episode_successes": [bool(s) for s in successes], "success_rate": float(np.mean(successes)),
                "oracle": {"kind": "plan", "noise": ORACLE_NOISE, "noise_smoothing": ORACLE_NOISE_SMOOTHING},
                "swfp_version": __version__}
    if kind == "play":
        metadata["episode_steps"] = episode_steps
    return build_dataset(fields, metadata).validate(task_id)


def _oracle(env):
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    return CubePlanOracle(env=env, noise=ORACLE_NOISE, noise_smoothing=ORACLE_NOISE_SMOOTHING)


def _empty_rows() -> dict[str, list]:
    return {name: [] for name in FIELDS}


def _append(rows: dict[str, list], *values) -> None:
    """One transition, its values in the order of :data:`swfp.data.FIELDS`."""
    for name, value in zip(FIELDS, values, strict=True):
        rows[name].append(value)


def _play(env, goals: np.ndarray, episodes: int, seed: int) -> tuple[dict[str, list], list[bool]]:
    """Task-agnostic play (OGBench's ``play`` data), labelled with the task's sparse reward."""
    cubes = len(goals)
    agent = _oracle(env)
    rows, successes = _empty_rows(), []
    for i in range(episodes):
        ob, info = env.reset(seed=seed + i)
        p_stack = 0.0 if cubes == 1 else np.random.uniform(0.0, 0.25)
        agent.reset(ob, info)
        reached, done = False, False
        while not done:
            action = np.clip(np.asarray(agent.select_action(ob, info)), -1.0, 1.0)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if agent.done:
                agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
                agent.reset(agent_ob, agent_info)
            at_goal = _at_goal(info["prev_qpos"], goals)  # the state the action was taken in
            success = bool(at_goal.all())
            reached |= success
            _append(rows, ob, action, at_goal.sum() - cubes, next_ob, success, done and not success)
            ob = next_ob
        successes.append(reached)
    return rows, successes


def _next_cube(env, goals: np.ndarray, current: int) -> int:
    """The first cube not at its goal in the environment's current state (``current`` if all are)."""
    away = np.flatnonzero(~_at_goal(env.unwrapped._data.qpos, goals))
    return int(away[0]) if len(away) else current


def _task(env, goals: np.ndarray, episodes: int, seed: int) -> tuple[dict[str, list], list[bool]]:
    """The oracle solving the evaluation task itself, one cube after another."""
    agent = _oracle(env)
    rows, successes = _empty_rows(), []
    for i in range(episodes):
        ob, info = env.reset(seed=seed + i)
        cube = _next_cube(env, goals, 0)
        agent.reset(ob, _with_target(info, cube, goals))
        done, success = False, False
        while not done:
            action = np.clip(np.asarray(agent.select_action(ob, _with_target(info, cube, goals))), -1.0, 1.0)
            next_ob, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            success = success or bool(info["success"])
            if agent.done and not done:  # this cube's plan has run out: carry the next one away from its goal
                cube = _next_cube(env, goals, cube)
                agent.reset(next_ob, _with_target(info, cube, goals))
            _append(rows, ob, action, reward, next_ob, terminated, truncated and not terminated)
            ob = next_ob
        successes.append(success)
    return rows, successes
