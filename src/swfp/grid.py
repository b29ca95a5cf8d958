"""The fine-tuning grid: every (task, method, seed) as a resumable ``swfp finetune`` trial, run locally or on Ray.

Layout under the grid's directory ``OUT``::

    OUT/grid.json                         the grid as requested, the command, commit and machine (and
                                          every earlier driver invocation, oldest first)
    OUT/data/<task>-medium.npz            demonstrations from the shipped expert (demo seed 0), unless given
    OUT/pretrain/<task>/seed<s>/          the BC flow every method of (task, seed) starts from
    OUT/runs/<task>/<algo>/seed<s>/       one ``swfp finetune`` run directory per trial
    OUT/trials.csv                        the state of every trial after the last driver run

A trial is **done** when its ``summary.json`` exists (it is skipped), **resumable** when it has a
``checkpoint.pt`` (it continues with ``--resume``), else it starts fresh. So a driver that was
killed, or a grid spread over several sessions, is restarted with the same command and carries on.
``stop_after`` bounds a driver's time (a cluster allocation, a working session): at that point every
running trial gets SIGTERM, checkpoints the env step it is at and exits (see
:mod:`swfp.runner`), and no further trial starts; nothing done is lost, and the next driver resumes
them. A trial's checkpoint is the one file to carry to wherever the grid continues. Stopping the
driver by hand (Ctrl-C, or SIGTERM to the driver) does the same at once, and ``trials.csv`` and the
end time in ``grid.json`` are still written. Each trial runs in its own session, so the signal that
reaches the driver's process group (a terminal's Ctrl-C) reaches the driver alone and each trial gets
exactly one SIGTERM from it: a second signal would end a trial before its checkpoint. (A driver killed
with SIGKILL leaves its trials running to their end.)
Each trial runs as its own ``swfp`` process with one torch thread (``OMP_NUM_THREADS=1``): with N
workers, N trials share the machine's N cores without over-subscription.

Executors: ``local`` runs up to ``workers`` trials at once on this machine; ``ray`` submits each
trial as a Ray task (``num_cpus=1``) to a local Ray instance, or to a cluster with ``ray_address``
(the grid directory must then be on storage every node sees). Pre-training jobs run first (one per
task and seed), then the trials.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swfp.runio import atomic_write_json, git_commit

EXECUTORS = ("local", "ray")
PRESETS = {
    "small": {"tasks": ["Hopper-v5", "Walker2d-v5"], "algos": ["swfp", "bptt", "reinflow", "dsrl", "rlpd", "bc"],
              "seeds": [0, 1, 2], "env_steps": 200_000},
    "full": {"tasks": ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5", "Humanoid-v5"],
             "algos": ["swfp", "bc", "bptt", "reinflow", "dsrl", "fql", "dipo", "sac", "rlpd"],
             "seeds": [0, 1, 2, 3, 4], "env_steps": 1_000_000},
}


@dataclass
class GridConfig:
    tasks: list[str]
    algos: list[str]
    seeds: list[int]
    env_steps: int
    pretrain_steps: int = 20_000
    demo_episodes: int = 50
    eval_episodes: int | None = None
    eval_every: int | None = None  # env steps between a trial's evaluations (None: finetune's 1/20 of the run)
    num_envs: int = 1
    datasets: dict[str, str] = field(default_factory=dict)  # task -> demonstrations (else made from the expert)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # algo -> {KEY: VALUE} for its --set
    device: str = "auto"  # every job's --device, as named: each job resolves it on the machine it runs on

    def __post_init__(self):
        from swfp.algorithms import get_algorithm
        from swfp.devices import resolve_device

        resolve_device(self.device)  # an unknown name, or CUDA on a machine without it, fails before anything runs
        if not (self.tasks and self.algos and self.seeds):
            raise ValueError("a grid needs at least one task, one algorithm and one seed")
        for algo in self.algos:
            get_algorithm(algo)  # unknown names fail here, before anything runs
        unused = set(self.settings) - set(self.algos)
        if unused:
            raise ValueError(f"settings given for {sorted(unused)}, which the grid does not run")
        if self.env_steps < 1 or self.pretrain_steps < 1 or self.num_envs < 1:
            raise ValueError("env_steps, pretrain_steps and num_envs must be >= 1")


@dataclass
class Job:
    """One process to run: a pre-training or a fine-tuning trial."""

    name: str
    command: list[str]
    run_dir: Path
    state: str  # "done", "resume" or "new"


def _swfp(*args: str) -> list[str]:
    return [sys.executable, "-m", "swfp.cli", *args]


def dataset_path(config: GridConfig, out: Path, task: str) -> str:
    """The task's demonstrations: given, or made by the grid from the shipped expert (:func:`run_grid`)."""
    return config.datasets.get(task) or str(out / "data" / f"{task.lower()}-medium.npz")


def pretrain_jobs(config: GridConfig, out: Path) -> list[Job]:
    jobs = []
    for task in config.tasks:
        for seed in config.seeds:
            run = out / "pretrain" / task / f"seed{seed}"
            dataset = dataset_path(config, out, task)
            state = "done" if (run / "summary.json").is_file() else "new"
            jobs.append(Job(f"pretrain {task} seed {seed}", _swfp(
                "pretrain", "--dataset", dataset, "--task", task, "--steps", str(config.pretrain_steps), "--seed",
                str(seed), "--device", config.device, "--out", str(run)), run, state))
    return jobs


def trial_jobs(config: GridConfig, out: Path) -> list[Job]:
    jobs = []
    for task in config.tasks:
        for algo in config.algos:
            for seed in config.seeds:
                run = out / "runs" / task / algo / f"seed{seed}"
                # The grid's own demonstrations, not the path in the pre-trained run's config.json: the
                # BC flows may come from another grid or machine (``pretrain`` may be a link to them).
                common = [str(out / "pretrain" / task / f"seed{seed}"), "--dataset", dataset_path(config, out, task),
                          "--device", config.device, "--out", str(run)]
                if (run / "summary.json").is_file():
                    state, args = "done", []
                elif (run / "checkpoint.pt").is_file():
                    state, args = "resume", ["finetune", *common, "--resume"]
                else:
                    state = "new"
                    args = ["finetune", *common, "--algo", algo, "--env-steps", str(config.env_steps), "--seed",
                            str(seed), "--num-envs", str(config.num_envs)]
                    args += [f"--set={k}={v}" for k, v in config.settings.get(algo, {}).items()]
                    if config.eval_episodes:
                        args += ["--eval-episodes", str(config.eval_episodes)]
                    if config.eval_every:
                        args += ["--eval-every", str(config.eval_every)]
                jobs.append(Job(f"{algo} {task} seed {seed}", _swfp(*args), run, state))
    return jobs


def run_job(job: Job, deadline: float | None = None, stop: list[int] | None = None) -> tuple[str, int | None]:
    """Run one job's process (in its own session) with one torch thread; its output goes to ``<run_dir>.log``.

    At ``deadline`` (seconds since the epoch), or once ``stop`` holds a signal the driver received,
    the process gets SIGTERM, on which a fine-tuning run checkpoints and exits; a job whose turn comes
    after that does not start. Returns (name, exit code), the code ``None`` for a job not started.
    """
    def stopping() -> bool:
        return bool(stop) or (deadline is not None and time.time() >= deadline)

    if stopping():
        return job.name, None
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(f"{job.run_dir}.log", "a") as log:
        log.write(f"$ {' '.join(job.command)}\n")
        log.flush()
        process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        code = None
        while code is None:
            try:
                code = process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if stopping():
                    process.send_signal(signal.SIGTERM)
                    code = process.wait()
    return job.name, code


def pending(jobs: list[Job]) -> list[Job]:
    """The jobs not done, resumable ones first (otherwise in grid order): a grid spread over several
    sessions finishes the trials it has started before it starts new ones, so fewer half-run trials
    (and their checkpoints) are carried from one session to the next."""
    return sorted((j for j in jobs if j.state != "done"), key=lambda j: j.state != "resume")


def execute(jobs: list[Job], executor: str, workers: int, ray_address: str | None = None,
            deadline: float | None = None, stop: list[int] | None = None) -> dict[str, int | None]:
    """Run the :func:`pending` jobs (until ``deadline`` or a ``stop``, see :func:`run_job`; Ray's tasks
    see only the deadline); returns their exit codes by name."""
    todo = pending(jobs)
    if not todo:
        return {}
    if executor == "local":
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(pool.map(lambda job: run_job(job, deadline, stop), todo))
    try:
        import ray
    except ImportError as exc:
        raise ValueError("the ray executor needs Ray: pip install 'swfp[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=ray_address, num_cpus=None if ray_address else workers, include_dashboard=False,
                 log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_job)
    return dict(ray.get([remote.remote(j, deadline) for j in todo]))


def trial_state(job: Job, code: int | None, stopped: str) -> str:
    """A trial's state after a driver run, as ``trials.csv`` and the driver's table show it; ``stopped``
    says why a trial that exited on the driver's SIGTERM was stopped."""
    if (job.run_dir / "summary.json").is_file():
        return "done"
    if (job.run_dir / "checkpoint.pt").is_file():
        why = {None: "not run", 128 + signal.SIGTERM: stopped}.get(code, f"exit {code}")
        return f"resumable ({why})"
    return "not started" if code is None else f"failed (exit {code})"


def run_grid(config: GridConfig, out: Path, executor: str = "local", workers: int | None = None,
             ray_address: str | None = None, stop_after: float | None = None) -> list[dict]:
    """Make the missing demonstrations, pre-train, run every trial not yet done; write ``trials.csv``.

    ``stop_after`` (seconds from now) stops the trials then, checkpointed and resumable; the driver's
    first SIGINT or SIGTERM stops them the same way at once (pre-training is not bounded: it is short
    and has no checkpoint, so a signal during it only keeps the trials from starting). ``grid.json``
    gets the end time and the signal, if one stopped the driver."""
    from swfp.bench import write_rows_csv
    from swfp.runner import stop_requests

    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if stop_after is not None and stop_after <= 0:
        raise ValueError(f"stop_after must be > 0 seconds, got {stop_after}")
    deadline = None if stop_after is None else time.time() + stop_after
    out = Path(out)
    workers = workers or os.cpu_count() or 1
    earlier = []
    if (out / "grid.json").is_file():  # a grid continued by another driver keeps every earlier invocation
        previous = json.loads((out / "grid.json").read_text())
        earlier = previous.pop("earlier_invocations", []) + [previous]
    record = {**asdict(config), "command": sys.argv, "git_commit": git_commit(), "machine": machine_description(),
              "executor": executor, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "earlier_invocations": earlier}
    atomic_write_json(out / "grid.json", record)
    for task in config.tasks:
        data = out / "data" / f"{task.lower()}-medium.npz"
        if task not in config.datasets and not data.is_file():
            from swfp.assets import shipped_expert_dir
            from swfp.demos import generate_demos
            generate_demos(task, shipped_expert_dir(task), "medium", config.demo_episodes, seed=0).save(data)
    with stop_requests() as stop:
        failed = {name: code for name, code in execute(pretrain_jobs(config, out), executor, workers,
                                                         ray_address).items() if code}
        if failed:
            raise RuntimeError(f"pre-training failed for {sorted(failed)}; see the .log beside each run directory")
        codes = execute(trial_jobs(config, out), executor, workers, ray_address, deadline, stop)
    signal_name = signal.Signals(stop[0]).name if stop else None
    stopped = f"stopped by {signal_name} to the driver" if signal_name else "stopped at the time limit"
    rows = [{"trial": job.name, "state": trial_state(job, codes.get(job.name), stopped),
             "run_dir": str(job.run_dir.relative_to(out))} for job in trial_jobs(config, out)]
    write_rows_csv(out / "trials.csv", rows)
    atomic_write_json(out / "grid.json", {**record, "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                          "stopped_by_signal": signal_name})
    return rows


def machine_description() -> str:
    return f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
