"""The online fine-tuning loop shared by every method: collect, learn, evaluate, checkpoint, log.

An algorithm is a :class:`Learner` (one file under ``swfp.algorithms``) and holds only what is
specific to it; the runner owns everything else, so methods compare on equal terms:

* **Env-step accounting.** Every environment step of every sub-environment counts toward the
  budget; evaluation steps do not.
* **Warm-up** (a method's offline updates on the demonstrations, e.g. its critic's) runs before the
  first evaluation, so the step-0 evaluation is the return the online phase starts from.
* **Evaluation** every ``eval_every`` env steps (and before the first step, which gives the
  pre-fine-tuning return), on fresh environments seeded by the run seed, with the stochastic policy
  and with the deterministic one (chains started from the noise mean).
* **Checkpoints** every ``checkpoint_every`` env steps: one file, ``checkpoint.pt``, written
  atomically with ``torch.save`` and read back with ``torch.load(weights_only=True)`` (no arbitrary
  unpickling). It holds the learner (networks, optimisers, replay, schedules and its own numpy
  generator), the counters and torch's RNG state. ``resume`` continues from it; what is lost is only the episodes that were in
  progress (environments restart their episodes) and TensorBoard events written after the
  checkpoint (they are written again). The CSV histories are cut back to the checkpoint, so a
  resumed run's history has no gap and no duplicate row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from swfp.envs import make_vector_env, step_vector_env, task_spec
from swfp.evaluate import evaluate
from swfp.logger import MetricLogger, make_progress, plot_learning_curve, read_csv
from swfp.runio import CheckpointError, atomic_write, atomic_write_json, atomic_write_text, write_run_metadata

CHECKPOINT = "checkpoint.pt"


class ActingPolicy(Protocol):
    """What the runner evaluates and saves: a flow :class:`~swfp.policy.Policy`, or a
    :class:`~swfp.algorithms.base.NetworkPolicy` for methods whose policy is not a flow cascade."""

    action_chunk: int

    def normalized_actions(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray: ...

    def save(self, directory: Path) -> Path: ...


class Learner(Protocol):
    """What an algorithm provides to the runner."""

    name: str

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Exploration actions ``(B, H·d)`` in ``[-1, 1]`` for raw observations ``(B, obs_dim)``."""

    def observe(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
                terminals: np.ndarray, truncations: np.ndarray) -> None:
        """Record one vector step of transitions (``next_obs`` is the true next state, also at episode ends;
        ``terminals`` are true terminations, ``truncations`` time limits)."""

    def warm_up(self) -> dict[str, float]:
        """Offline updates before the first environment step (a fresh run only); metrics to log."""

    def train(self, env_step: int) -> dict[str, float]:
        """Do the updates due after ``env_step`` environment steps; return metrics to log (may be empty)."""

    def policy(self) -> "ActingPolicy":
        """The current policy, for evaluation and saving."""

    def status(self) -> dict[str, float]:
        """A few figures for the live view and the evaluation log (e.g. blocks, trust region)."""

    def state_dict(self) -> dict:
        """Everything needed to resume (tensors, numbers, strings, lists and dicts of them)."""

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class RunConfig:
    task: str
    total_env_steps: int = 300_000
    num_envs: int = 1
    seed: int = 0
    eval_every: int | None = None        # None: total / 20
    eval_episodes: int | None = None     # None: the task's default
    checkpoint_every: int | None = None  # None: total / 10
    log_every: int = 1_000

    def __post_init__(self):
        if self.total_env_steps < 1 or self.num_envs < 1 or self.log_every < 1:
            raise ValueError("total_env_steps, num_envs and log_every must be >= 1")
        for name in ("eval_every", "eval_episodes", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset for the default), got {value}")

    def resolved(self) -> "RunConfig":
        return RunConfig(**{**self.__dict__,
                            "eval_every": self.eval_every or max(self.total_env_steps // 20, 1),
                            "eval_episodes": self.eval_episodes or task_spec(self.task).eval_episodes,
                            "checkpoint_every": self.checkpoint_every or max(self.total_env_steps // 10, 1)})


PHASES = ("collect", "train", "eval", "log", "checkpoint")


class PhaseClock:
    """Wall time per phase of the loop: ``switch(phase)`` charges the time since the last switch to the
    phase that was running, so every second of the loop lands in exactly one phase."""

    def __init__(self, phases: tuple[str, ...]):
        self.seconds = {phase: 0.0 for phase in phases}
        self.current: str | None = None
        self.since = time.perf_counter()

    def switch(self, phase: str | None) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] += now - self.since
        self.current, self.since = phase, now


def _crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every


def evaluate_policy(policy: ActingPolicy, config: RunConfig, deterministic_too: bool = True) -> dict[str, float]:
    """Stochastic (and deterministic) returns of ``policy`` on the run's fixed evaluation seeds."""
    out = {}
    for label, deterministic in (("", False), ("det_", True))[: 2 if deterministic_too else 1]:
        result = evaluate(lambda o: policy.normalized_actions(o, deterministic=deterministic), config.task,
                          config.eval_episodes, seed=config.seed + 1_000_000, action_chunk=policy.action_chunk)
        summary = result.summary()
        out.update({f"{label}return_mean": summary["return_mean"], f"{label}return_std": summary["return_std"],
                    f"{label}return_iqm": summary["return_iqm"]})
    return out


def rng_state(rng: np.random.Generator) -> str:
    """A numpy generator's state as JSON (storable in a weights-only checkpoint)."""
    return json.dumps(rng.bit_generator.state)


def restore_rng(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)


def save_checkpoint(out: Path, learner: Learner, env_step: int) -> None:
    state = {"env_step": env_step, "learner": learner.state_dict(), "torch_rng": torch.get_rng_state(),
             "algorithm": learner.name}
    atomic_write(out / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(out: Path, learner: Learner) -> int:
    path = out / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (the run wrote no checkpoint yet); "
                              "start it again without --resume")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a swfp checkpoint ({exc})") from exc
    if state.get("algorithm") != learner.name:
        raise CheckpointError(f"checkpoint {path} was written by algorithm {state.get('algorithm')!r}, "
                              f"not {learner.name!r}; resume with the same --algo")
    learner.load_state_dict(state["learner"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["env_step"])


def _truncate_history(out: Path, env_step: int) -> None:
    """Drop CSV rows logged after the checkpoint, so the resumed run continues the history exactly."""
    for path in out.glob("*.csv"):
        with open(path) as f:
            header = f.readline().strip().split(",")
        rows = [r for r in read_csv(path) if r["step"] <= env_step]
        lines = [",".join(header)] + [",".join(_fmt(r.get(h)) for h in header) for r in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")


def _fmt(value) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def run(learner: Learner, config: RunConfig, out: Path, resume: bool = False, run_config: dict | None = None) -> dict:
    """Fine-tune ``learner`` online for ``config.total_env_steps`` environment steps; write ``out``.

    ``run_config`` is the full resolved configuration saved as ``config.json`` (the runner's own
    plus the algorithm's). Returns the summary also written to ``summary.json``.
    """
    out = Path(out)
    config = config.resolved()
    torch.manual_seed(config.seed)
    if resume:
        env_step = load_checkpoint(out, learner)
        _truncate_history(out, env_step)
    else:
        env_step = 0
        write_run_metadata(out, run_config or {"run": config}, config.seed, kind=f"finetune-{learner.name}")
    logger = MetricLogger(out)
    venv = make_vector_env(config.task, config.num_envs, seed=config.seed + env_step)
    obs, _ = venv.reset(seed=config.seed + env_step)
    if env_step == 0:
        warmup_metrics = learner.warm_up()
        if warmup_metrics:
            logger.log("train", 0, warmup_metrics)
        logger.log("eval", 0, {**evaluate_policy(learner.policy(), config), **learner.status()})
    clock = PhaseClock(PHASES)
    start, start_step = time.time(), env_step
    with make_progress() as progress:
        bar = progress.add_task(f"{learner.name} {config.task}", total=config.total_env_steps,
                                completed=env_step, status="")
        while env_step < config.total_env_steps:
            clock.switch("collect")
            actions = learner.act(obs)
            next_obs, reward, terminated, truncated, real_next, _ = step_vector_env(venv, actions)
            learner.observe(obs, actions, reward, real_next, terminated, truncated)
            obs = next_obs
            before, env_step = env_step, env_step + config.num_envs
            clock.switch("train")
            metrics = learner.train(env_step)
            clock.switch("log")
            if metrics and _crossed(before, env_step, config.log_every):
                logger.log("train", env_step, metrics)
            if _crossed(before, env_step, config.eval_every) or env_step >= config.total_env_steps:
                clock.switch("eval")
                evaluation = {**evaluate_policy(learner.policy(), config), **learner.status()}
                clock.switch("log")
                logger.log("eval", env_step, evaluation)
                progress.update(bar, status=" ".join(f"{k} {v:.3g}" for k, v in evaluation.items()
                                                     if k in ("return_mean", "det_return_mean", "blocks",
                                                              "w2_upper", "trust_bound")))
            if _crossed(before, env_step, config.checkpoint_every):
                clock.switch("checkpoint")
                save_checkpoint(out, learner, env_step)
                clock.switch("log")
            progress.update(bar, completed=env_step)
        clock.switch(None)
    venv.close()
    logger.close()
    learner.policy().save(out)
    save_checkpoint(out, learner, env_step)
    history = read_csv(out / "eval.csv")
    before_return, final = history[0]["return_mean"], history[-1]
    summary = {"algorithm": learner.name, "task": config.task, "env_steps": env_step,
               "return_before": before_return, "return_after": final["return_mean"],
               "det_return_before": history[0]["det_return_mean"], "det_return_after": final["det_return_mean"],
               "largest_dip_below_start": max(0.0, before_return - min(r["return_mean"] for r in history)),
               "wall_seconds_this_session": round(time.time() - start, 1),
               "seconds_per_env_step": {k: v / max(env_step - start_step, 1) for k, v in clock.seconds.items()},
               "status": learner.status()}
    atomic_write_json(out / "summary.json", summary)
    plot_learning_curve(out, [("eval", "return_mean"), ("eval", "det_return_mean")],
                        f"{learner.name} fine-tuning on {config.task}", {"before fine-tuning": before_return})
    return summary
