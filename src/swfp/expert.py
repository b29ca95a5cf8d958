"""Gaussian SAC experts, the source of the demonstrations, trained on the shared online loop.

``swfp expert`` runs the ``sac`` baseline (:class:`swfp.algorithms.rlpd.SACFromScratch`: CleanRL / SB3
settings, uniform random actions inside the box ``[-1, 1]`` for the first ``learning_starts`` env steps)
through :func:`swfp.runner.run`, so an expert run checkpoints every ``checkpoint_every`` env steps and on
SIGTERM, continues with ``--resume``, and logs, plots and records its metadata as every fine-tuning run
does. What an expert adds to that baseline:

* **Observation statistics of its own.** The ``sac`` baseline standardises observations with the
  statistics of the demonstrations it was given; an expert has none, so it standardises with the running
  mean and variance of every state it has visited, applied to each batch and each action as Brax's SAC
  does (``normalize_observations``, ``brax/training/acme/running_statistics.py``). The experts shipped
  before issue 37 saw raw observations.
* **Snapshots** of the actor at every evaluation (``RunConfig.snapshots``: ``snapshots/<env step>/actor.*``,
  the weights and the statistics of that moment, 0.3–0.4 MB), from which :mod:`swfp.expert_choice` picks
  the expert and the "medium" policy that ship, after the run.
* **The whole replay, in order.** The ring holds the whole budget (``replay_capacity`` ≥ env steps), so
  the final ``checkpoint.pt`` keeps every transition the run collected: D4RL's medium-replay is its
  prefix up to the medium snapshot (:func:`swfp.demos.medium_replay`).

A finished expert directory holds, beside the run's files, ``expert.json`` (the choice and its numbers)
and the two chosen actors ``expert/`` and ``medium/`` (:class:`~swfp.algorithms.network_policy.NetworkPolicy`'s
format, so ``swfp eval DIR/expert`` and ``swfp.load`` read them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swfp.algorithms import ACTORS, build_config
from swfp.algorithms.network_policy import NetworkPolicy
from swfp.algorithms.rlpd import SACFromScratch, SACFromScratchConfig
from swfp.buffer import ReplayBuffer
from swfp.data import action_bounds
from swfp.devices import resolve_device, to_device
from swfp.envs import env_dims
from swfp.expert_choice import ChoiceConfig, choose
from swfp.logger import plot_learning_curve
from swfp.policy import EnvPolicy
from swfp.runio import CheckpointError, atomic_write_json, read_json
from swfp.runner import CHECKPOINT, RunConfig, run

QUALITIES = ("expert", "medium")
MIN_OBS_STD = 1e-3  # the floor Dataset.observation_stats puts under a constant dimension's std
EVAL_EVERY, EVAL_EPISODES = 20_000, 10


@dataclass
class ExpertConfig(SACFromScratchConfig):
    """The ``sac`` baseline's settings (``replay_capacity`` must hold the whole budget) and how the shipped
    policies are chosen after the run."""

    choice: ChoiceConfig = field(default_factory=ChoiceConfig)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.choice, dict):
            self.choice = ChoiceConfig(**self.choice)


class RunningMoments:
    """Mean and variance of a stream of vectors, batch by batch, in float64 (Chan, Golub and LeVeque's
    pairwise update: exact, and stable over millions of states)."""

    def __init__(self, dim: int):
        self.count, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)  # m2: sum of squared deviations

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.mean.shape[0])
        n, batch_mean = len(x), x.mean(0)
        delta, total = batch_mean - self.mean, self.count + len(x)
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + ((x - batch_mean) ** 2).sum(0) + delta ** 2 * self.count * n / total
        self.count = total

    def std(self) -> np.ndarray:
        return np.maximum(np.sqrt(self.m2 / max(self.count, 1)), MIN_OBS_STD)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": torch.from_numpy(self.mean), "m2": torch.from_numpy(self.m2)}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), state["mean"].numpy(), state["m2"].numpy()


def check_budget(config: ExpertConfig, total_env_steps: int) -> None:
    """An expert run's budget must fit its replay (medium-replay is the replay's prefix) and outlast its warm-up."""
    if config.replay_capacity < total_env_steps:
        raise ValueError(f"replay_capacity {config.replay_capacity} < {total_env_steps} env steps: the replay "
                         "would overwrite its first transitions, which medium-replay needs; set "
                         f"replay_capacity={total_env_steps} (--set, when the run starts)")
    if config.learning_starts >= total_env_steps:
        raise ValueError(f"learning_starts {config.learning_starts} >= {total_env_steps} env steps: the run would "
                         "only act at random; lower it (--set learning_starts=N) or raise --env-steps")


class Expert(SACFromScratch):
    """The ``sac`` baseline on its own running observation statistics (see the module docstring)."""

    name = "expert"
    description = "Gaussian SAC from scratch on running observation statistics (swfp expert)"
    config_class = ExpertConfig

    def __init__(self, task: str, config: ExpertConfig | None = None, total_env_steps: int = 1_000_000,
                 device: torch.device | str = "cpu"):
        obs_dim, act_dim = env_dims(task)
        low, high = action_bounds(task)
        frame = EnvPolicy(task, np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32), low, high, device=device)
        config = config or ExpertConfig()
        check_budget(config, total_env_steps)
        super().__init__(frame, None, config, total_env_steps)
        self.moments = RunningMoments(obs_dim)

    def observe(self, obs, actions, rewards, next_obs, terminals, truncations=None, steps=None) -> None:
        """Store the transitions, and standardise from now on with the statistics of every state visited."""
        super().observe(obs, actions, rewards, next_obs, terminals, truncations, steps)
        self.moments.update(obs)
        self._use_statistics()

    def _use_statistics(self) -> None:
        """The batches (``sample_batch`` reads the frame's) and the acting policy use the current statistics."""
        mean, std = (to_device(v, self.device) for v in (self.moments.mean, self.moments.std()))
        for policy in (self._policy, self.acting):
            policy.obs_mean, policy.obs_std = mean, std

    def state_dict(self) -> dict:
        return {**super().state_dict(), "moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.moments.load_state_dict(state["moments"])
        self._use_statistics()


def expert_run_config(task: str, env_steps: int, seed: int = 0, eval_every: int = EVAL_EVERY,
                      eval_episodes: int = EVAL_EPISODES, checkpoint_every: int | None = None) -> RunConfig:
    """The runner's settings of an expert run: one environment (the replay stays in collection order, as
    medium-replay needs) and a snapshot at every evaluation."""
    return RunConfig(task=task, total_env_steps=env_steps, seed=seed, eval_every=min(eval_every, env_steps),
                     eval_episodes=eval_episodes, checkpoint_every=checkpoint_every, snapshots=True)


def extend_budget(out: Path, env_steps: int) -> dict:
    """Raise the budget of the expert run ``out`` to ``env_steps`` before it is resumed, as SB3's
    ``learn(total_timesteps, reset_num_timesteps=False)`` continues a model: the run goes on from its last
    checkpoint (a finished run's is its end) with every other setting unchanged, and the choice is made again
    over all its snapshots. ``config.json`` takes the new budget and ``meta.json`` records the extension.
    Returns the saved configuration with the new budget. How a run longer than one working session is made
    in pieces: run what fits, then extend it in the next session."""
    out = Path(out)
    saved = read_json(out / "config.json")
    budget = saved["run"]["total_env_steps"]
    if env_steps < budget:
        raise ValueError(f"--env-steps {env_steps} is below {out}'s budget of {budget}: a resumed run can only be "
                         f"extended; pass --env-steps above {budget}, or --resume alone to finish it")
    check_budget(build_config(ExpertConfig, saved=saved["config"]), env_steps)
    if env_steps > budget:
        saved["run"]["total_env_steps"] = env_steps
        meta = read_json(out / "meta.json")
        meta.setdefault("budget_extended", []).append({"from": budget, "to": env_steps})
        atomic_write_json(out / "config.json", saved)
        atomic_write_json(out / "meta.json", meta)
    return saved


def train_expert(config: ExpertConfig, run_config: RunConfig, out: Path, resume: bool = False,
                 device: torch.device | str = "auto") -> dict:
    """Train (or with ``resume`` continue) the expert run ``out`` on ``device``, then choose the policies it ships
    and plot its learning curve with them; returns the choice (also ``out/expert.json``)."""
    device = resolve_device(device)
    out = Path(out)
    if not run_config.snapshots or run_config.num_envs != 1:
        raise ValueError("an expert run needs snapshots and a single environment; build its RunConfig with "
                         "expert_run_config")
    torch.manual_seed(run_config.seed)  # the initial weights; on resume the checkpoint replaces them
    learner = Expert(run_config.task, config, run_config.total_env_steps, device)
    if not resume:  # on resume, the checkpoint restores the generator
        learner.rng = np.random.default_rng(run_config.seed)
    run(learner, run_config, out, resume, {"algorithm": Expert.name, "run": run_config, "config": config},
        kind="expert", resume_command=f"swfp expert --out {out} --resume")
    choice = choose(out, config.choice, device)
    plot_learning_curve(out, [("eval", "return_mean"), ("eval", "det_return_mean")],
                        f"SAC expert on {run_config.task}",
                        {f"expert (step {choice['expert']['step']})": choice["expert"]["evaluation"]["return_mean"],
                         f"medium (step {choice['medium']['step']})": choice["medium"]["evaluation"]["return_mean"]})
    return choice


def load_expert(expert_dir: Path, quality: str) -> tuple[NetworkPolicy, dict]:
    """The policy of ``quality`` ("expert" or "medium") and the directory's ``expert.json``. On the CPU wherever
    it runs: demonstrations made from it are then the same on every machine for the same seed."""
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; choose one of {QUALITIES}")
    expert_dir = Path(expert_dir)
    return NetworkPolicy.load(expert_dir / quality, ACTORS, "cpu"), read_json(expert_dir / "expert.json")


def recorded_replay(run_dir: Path) -> ReplayBuffer:
    """Every transition the expert run ``run_dir`` collected, in order, from its final ``checkpoint.pt``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: medium-replay is the replay of the expert's training run, kept in "
                              "its checkpoint; pass --expert with the directory `swfp expert` wrote (the shipped "
                              "experts do not include it)")
    try:
        online = torch.load(path, weights_only=True, mmap=True, map_location="cpu")["learner"]["online"]
    except Exception as exc:  # noqa: BLE001 — any unpickling failure means a corrupt or foreign file
        raise CheckpointError(f"{path} is corrupt or not the checkpoint of an expert run ({exc!r})") from exc
    replay = ReplayBuffer(online["observations"].shape[1], online["actions"].shape[1], len(online["rewards"]))
    replay.load_state_dict({k: v.numpy() for k, v in online.items()})
    return replay
