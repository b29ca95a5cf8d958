"""The online fine-tuning loop shared by every method: collect, learn, evaluate, checkpoint, log.

An algorithm is a :class:`Learner` (one file under ``swfp.algorithms``) and holds only what is
specific to it; the runner owns everything else, so methods compare on equal terms:

* **Env-step accounting.** Every environment step of every sub-environment counts toward the
  budget; evaluation steps do not.
* **Warm-up** (a method's offline updates on the demonstrations, e.g. its critic's) runs before the
  first evaluation, so the step-0 evaluation is the return the online phase starts from.
* **Evaluation** every ``eval_every`` env steps (and before the first step, which gives the
  pre-fine-tuning return), on fresh environments seeded by the run seed, with the stochastic policy
  and with the deterministic one (chains started from the noise mean), by the one evaluator
  :func:`swfp.evaluate.evaluate_seeded`: its episodes and noise come from ``seed + 1,000,000``, not
  from the training's random streams, and every ``eval.csv`` row records them (``eval_episodes``,
  ``eval_seed``), so ``swfp eval RUN --recorded`` reproduces the run's last evaluation.
* **Checkpoints** every ``checkpoint_every`` env steps: one file, ``checkpoint.pt``, written
  atomically with ``torch.save`` and read back with ``torch.load(weights_only=True)`` (no arbitrary
  unpickling). It holds the learner (networks, optimisers, replay, schedules and its own numpy
  generator), the counters and torch's RNG state. ``resume`` continues from it; what is lost is only the episodes that were in
  progress (environments restart their episodes) and TensorBoard events written after the
  checkpoint (they are written again). The CSV histories are cut back to the checkpoint, so a
  resumed run's history has no gap and no duplicate row.
* **Stopping.** SIGINT (Ctrl-C) or SIGTERM (a cluster's pre-emption, ``swfp bench grid
  --stop-after``) lets the current env step finish, writes a checkpoint at that step and raises
  :class:`RunStopped`, so a resumed run loses nothing; a second signal acts as it would have
  without the runner (e.g. Ctrl-C interrupts at once).
* **Wall time** is charged to the loop's phases (:class:`PhaseClock`) and carried in the
  checkpoint, so a run spread over several sessions reports its whole time and its time per step.
  Host↔device copies (observations in, actions out, replay batches in; :mod:`swfp.devices`) are taken
  out of whichever phase made them and charged to their own phase, ``transfer``.
* **Devices.** The learner's networks live on its device, the environments and the replay on the host.
  A checkpoint is read onto the host (``map_location="cpu"``) and copied into the learner's tensors,
  wherever they are: a run started on a GPU resumes on a CPU-only machine and the other way round.
  The device and torch's thread count of every session are recorded in ``meta.json``.
* **Snapshots** (``RunConfig.snapshots``, off by default): the policy of every evaluation saved under
  ``snapshots/<env step>/``, so a policy can be chosen after the run from more than its last one
  (``swfp expert`` ships its best snapshot and a "medium" one, :mod:`swfp.expert_choice`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from swfp.chunks import execute_chunk
from swfp.devices import transfer_seconds
from swfp.envs import make_vector_env, step_vector_env, task_spec
from swfp.evaluate import ActingPolicy, evaluate_seeded, seed_columns
from swfp.logger import MetricLogger, make_progress, plot_learning_curve, read_csv
from swfp.runio import (CheckpointError, atomic_write, atomic_write_json, atomic_write_text, record_resumption,
                        write_run_metadata)

CHECKPOINT = "checkpoint.pt"
SNAPSHOTS = "snapshots"
EVAL_SEED_OFFSET = 1_000_000


class SavablePolicy(ActingPolicy, Protocol):
    """What the runner evaluates and saves: a flow :class:`~swfp.policy.Policy`, or a
    :class:`~swfp.algorithms.network_policy.NetworkPolicy` for methods whose policy is not a flow cascade."""

    def save(self, directory: Path) -> Path: ...


class Learner(Protocol):
    """What an algorithm provides to the runner."""

    name: str
    device: torch.device  # where its networks live (the environments and the replay stay on the host)
    demonstrations_sha256: str | None  # fingerprint of the demonstrations it learns from, for meta.json

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

    def pop_records(self) -> list[tuple[str, dict[str, float]]]:
        """Events to log now, whatever ``log_every`` (e.g. SWFP's judged blocks): ``(stream, metrics)`` pairs,
        each written as a row of ``<stream>.csv`` at the current env step; the learner forgets them."""

    def policy(self) -> "SavablePolicy":
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
    snapshots: bool = False              # save the policy of every evaluation under snapshots/<env step>/

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


PHASES = ("collect", "train", "eval", "log", "checkpoint", "transfer")


class PhaseClock:
    """Wall time per phase of the loop: ``switch(phase)`` charges the time since the last switch to the
    phase that was running, less the host↔device copies made meanwhile (:func:`swfp.devices.transfer_seconds`),
    which go to the phase ``"transfer"`` (one of ``phases``); so every second of the loop lands in exactly one
    phase. ``seconds`` starts from an earlier session's totals when a run is resumed."""

    def __init__(self, phases: tuple[str, ...], seconds: dict[str, float] | None = None):
        self.seconds = {phase: float((seconds or {}).get(phase, 0.0)) for phase in phases}
        self.current: str | None = None
        self.since, self.transferred = time.perf_counter(), transfer_seconds()

    def switch(self, phase: str | None) -> None:
        now, transferred = time.perf_counter(), transfer_seconds()
        if self.current is not None:
            copies = transferred - self.transferred
            self.seconds[self.current] += now - self.since - copies
            self.seconds["transfer"] += copies
        self.current, self.since, self.transferred = phase, now, transferred


def _crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every


def evaluation_seed(config: RunConfig) -> int:
    """The run's evaluation seed: episode ``i`` starts from ``seed + i`` and the policy's noise from ``seed``.
    Offset from the run seed so that no evaluation episode is one the run trains on."""
    return config.seed + EVAL_SEED_OFFSET


def evaluate_policy(policy: ActingPolicy, config: RunConfig, deterministic_too: bool = True) -> dict[str, float]:
    """Stochastic (and deterministic) returns of ``policy`` on the run's fixed evaluation seeds, and the seeds;
    on a task that reports success (``info["success"]``), the success rates too."""
    seed = evaluation_seed(config)
    out: dict[str, float] = {}
    for label, deterministic in (("", False), ("det_", True))[: 2 if deterministic_too else 1]:
        summary = evaluate_seeded(policy, config.task, config.eval_episodes, seed, deterministic).summary()
        out.update({f"{label}return_mean": summary["return_mean"], f"{label}return_std": summary["return_std"],
                    f"{label}return_iqm": summary["return_iqm"]})
        if summary["success_rate"] is not None:
            out[f"{label}success_rate"] = summary["success_rate"]
    return {**out, **seed_columns(config.eval_episodes, seed)}


def rng_state(rng: np.random.Generator) -> str:
    """A numpy generator's state as JSON (storable in a weights-only checkpoint)."""
    return json.dumps(rng.bit_generator.state)


def restore_rng(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)


class RunStopped(Exception):
    """A run stopped by a signal after checkpointing its current env step; ``--resume`` continues it."""

    def __init__(self, signum: int, env_step: int, config: RunConfig, out: Path, resume_command: str):
        self.signum, self.env_step = signum, env_step
        super().__init__(f"stopped by {signal.Signals(signum).name} at env step {env_step} of "
                         f"{config.total_env_steps}; checkpoint written to {out / CHECKPOINT}; continue with "
                         f"`{resume_command}`")


@contextlib.contextmanager
def stop_requests():
    """Yield a list that SIGINT and SIGTERM append their number to, instead of interrupting.

    The loop checks it once per env step, so a stop never lands inside an update (a checkpoint
    written there would hold half-updated networks). The first signal restores the previous
    handlers, so a second one acts as usual. Signal handlers can only be set from the main thread;
    elsewhere (e.g. ``learn`` called from a worker thread) signals are left alone.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        received.append(signum)
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def save_checkpoint(out: Path, learner: Learner, env_step: int, clock: PhaseClock) -> None:
    """The training state (``checkpoint.pt``, what ``--resume`` reads) and the policy of this moment, so an
    unfinished run's latest policy can be evaluated or measured (``swfp eval``, ``swfp bench compaction``)."""
    state = {"env_step": env_step, "learner": learner.state_dict(), "torch_rng": torch.get_rng_state(),
             "algorithm": learner.name, "phase_seconds": dict(clock.seconds)}
    if learner.device.type == "cuda":  # the device's own generator draws the device's random numbers
        state["cuda_rng"] = torch.cuda.get_rng_state(learner.device)
    atomic_write(out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
    learner.policy().save(out)


def load_checkpoint(out: Path, learner: Learner) -> tuple[int, dict[str, float]]:
    """Restore ``learner`` and torch's RNG; returns the checkpoint's env step and the loop's phase seconds.

    The file is read onto the host whatever device wrote it (a checkpoint of a GPU run holds CUDA tensors,
    which would not load on a machine without one); the learner copies what it needs onto its own device.
    The CUDA generator's state is restored when both the checkpoint and the learner are on CUDA."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (the run wrote no checkpoint yet); "
                              "start it again without --resume")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 — any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a swfp checkpoint ({exc})") from exc
    if state.get("algorithm") != learner.name:
        raise CheckpointError(f"checkpoint {path} was written by algorithm {state.get('algorithm')!r}, "
                              f"not {learner.name!r}; resume with the same --algo")
    learner.load_state_dict(state["learner"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and learner.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], learner.device)
    return int(state["env_step"]), state["phase_seconds"]


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


def run(learner: Learner, config: RunConfig, out: Path, resume: bool = False, run_config: dict | None = None,
        kind: str | None = None, resume_command: str | None = None) -> dict:
    """Train ``learner`` online for ``config.total_env_steps`` environment steps; write ``out``.

    ``run_config`` is the full resolved configuration saved as ``config.json`` (the runner's own
    plus the algorithm's); ``kind`` names the run in ``meta.json`` (default ``finetune-<name>``) and
    ``resume_command`` is what a stopped run tells the user to type (default: ``swfp finetune``'s). Returns
    the summary also written to ``summary.json``. Raises :class:`RunStopped` after checkpointing if
    SIGINT or SIGTERM arrives while it runs.
    """
    out = Path(out)
    resume_command = resume_command or f"swfp finetune PRETRAINED_RUN --out {out} --resume"
    with stop_requests() as stop:
        return _run(learner, config.resolved(), out, resume, run_config, kind or f"finetune-{learner.name}",
                    resume_command, stop)


def _evaluate(learner: Learner, config: RunConfig, out: Path, env_step: int, logger: MetricLogger) -> dict:
    """Evaluate the learner's policy, log it as a row of ``eval.csv`` and, with ``config.snapshots``, save it."""
    policy = learner.policy()
    evaluation = {**evaluate_policy(policy, config), **learner.status()}
    logger.log("eval", env_step, evaluation)
    if config.snapshots:
        policy.save(out / SNAPSHOTS / str(env_step))
    return evaluation


def _run(learner: Learner, config: RunConfig, out: Path, resume: bool, run_config: dict | None, kind: str,
         resume_command: str, stop: list[int]) -> dict:
    torch.manual_seed(config.seed)
    if resume:
        env_step, phase_seconds = load_checkpoint(out, learner)
        _truncate_history(out, env_step)
        record_resumption(out, env_step, learner.device)
    else:
        env_step, phase_seconds = 0, {}
        write_run_metadata(out, run_config or {"run": config}, config.seed, kind=kind, device=learner.device,
                           dataset_sha256=learner.demonstrations_sha256)
    logger = MetricLogger(out, elapsed=sum(phase_seconds.values()))
    chunk = learner.policy().action_chunk
    venv = make_vector_env(config.task, config.num_envs, seed=config.seed + env_step)
    obs, _ = venv.reset(seed=config.seed + env_step)
    if not resume:
        warmup_metrics = learner.warm_up()
        if warmup_metrics:
            logger.log("train", 0, warmup_metrics)
        _evaluate(learner, config, out, 0, logger)
    clock = PhaseClock(PHASES, phase_seconds)
    with make_progress() as progress:
        bar = progress.add_task(f"{learner.name} {config.task}", total=config.total_env_steps,
                                completed=env_step, status="")
        while env_step < config.total_env_steps and not stop:
            clock.switch("collect")
            actions = learner.act(obs)
            if chunk == 1:
                next_obs, reward, terminated, truncated, real_next, _ = step_vector_env(venv, actions)
                learner.observe(obs, actions, reward, real_next, terminated, truncated)
                steps = config.num_envs
            else:  # one transition per chunk of actions executed open-loop (swfp.chunks)
                next_obs, reward, terminated, truncated, real_next, executed = execute_chunk(venv, actions, chunk)
                learner.observe(obs, actions, reward, real_next, terminated, truncated, steps=executed)
                steps = int(executed.sum())
            obs = next_obs
            before, env_step = env_step, env_step + steps
            clock.switch("train")
            metrics = learner.train(env_step)
            clock.switch("log")
            if metrics and _crossed(before, env_step, config.log_every):
                logger.log("train", env_step, metrics)
            for stream, record in learner.pop_records():
                logger.log(stream, env_step, record)
            if _crossed(before, env_step, config.eval_every) or env_step >= config.total_env_steps:
                clock.switch("eval")
                evaluation = _evaluate(learner, config, out, env_step, logger)
                clock.switch("log")
                progress.update(bar, status=" ".join(f"{k} {v:.3g}" for k, v in evaluation.items()
                                                     if k in ("return_mean", "det_return_mean", "blocks",
                                                              "w2_upper", "trust_bound")))
            if _crossed(before, env_step, config.checkpoint_every):
                clock.switch("checkpoint")
                save_checkpoint(out, learner, env_step, clock)
                clock.switch("log")
            progress.update(bar, completed=env_step)
        clock.switch(None)
    venv.close()
    logger.close()
    save_checkpoint(out, learner, env_step, clock)
    if env_step < config.total_env_steps:
        raise RunStopped(stop[0], env_step, config, out, resume_command)
    history = read_csv(out / "eval.csv")
    before_return, final = history[0]["return_mean"], history[-1]
    summary = {"algorithm": learner.name, "task": config.task, "env_steps": env_step,
               "return_before": before_return, "return_after": final["return_mean"],
               "det_return_before": history[0]["det_return_mean"], "det_return_after": final["det_return_mean"],
               **{f"{key}_{when}": row[key] for key in ("success_rate", "det_success_rate") if key in final
                  for when, row in (("before", history[0]), ("after", final))},
               "largest_dip_below_start": max(0.0, before_return - min(r["return_mean"] for r in history)),
               **seed_columns(config.eval_episodes, evaluation_seed(config)),
               "wall_seconds": round(sum(clock.seconds.values()), 1),
               "seconds_per_env_step": {k: v / max(env_step, 1) for k, v in clock.seconds.items()},
               "status": learner.status()}
    atomic_write_json(out / "summary.json", summary)
    plot_learning_curve(out, [("eval", "return_mean"), ("eval", "det_return_mean")]
                        + [("eval", key) for key in ("success_rate", "det_success_rate") if key in final],
                        f"{learner.name} fine-tuning on {config.task}", {"before fine-tuning": before_return})
    return summary
