"""The fine-tuning grid on a tiny bandit grid (two methods, one seed, a few hundred steps) with both
executors, and a restarted driver that skips finished trials and resumes unfinished ones."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from swfp.bandit import misplaced_demonstrations
from swfp.grid import GridConfig, pending, run_grid, trial_jobs
from swfp.logger import read_csv
from test_swfp import kill_after_first_checkpoint

TASK = "swfp/QuadraticBandit-v0"
SWFP_FAST = {"critic_warmup_steps": "100", "block_grad_steps": "30", "blocks_per_run": "2"}


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "demos.npz"
    misplaced_demonstrations(1000, seed=0).save(path)
    return str(path)


def tiny_grid(demos: str, steps: int = 200) -> GridConfig:
    return GridConfig(tasks=[TASK], algos=["bc", "swfp"], seeds=[0], env_steps=steps, pretrain_steps=200,
                      eval_episodes=16, eval_every=100, num_envs=4, datasets={TASK: demos},
                      settings={"swfp": SWFP_FAST})


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_tiny_grid_runs_every_trial(demos, tmp_path, executor):
    rows = run_grid(tiny_grid(demos), tmp_path, executor=executor, workers=2)
    assert [r["state"] for r in rows] == ["done", "done"]
    for algo in ("bc", "swfp"):
        run = tmp_path / "runs" / TASK / algo / "seed0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["algorithm"] == algo and summary["env_steps"] == 200
        assert json.loads((run / "config.json").read_text())["algorithm"] == algo
        assert len(read_csv_rows(run / "eval.csv")) == 3  # at 0, 100 and 200 env steps: the grid's --eval-every
    swfp_config = json.loads((tmp_path / "runs" / TASK / "swfp" / "seed0" / "config.json").read_text())["config"]
    assert swfp_config["block_grad_steps"] == 30  # the per-method settings reached the trial
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert grid["executor"] == executor and grid["algos"] == ["bc", "swfp"] and "cores" in grid["machine"]
    assert [r["state"] for r in read_csv_rows(tmp_path / "trials.csv")] == ["done", "done"]


def test_rescore_evaluates_every_trials_final_policy_on_the_same_episodes(demos, tmp_path, capsys):
    """Issue 42: a grid of a flow-cascade method (bc) and one that acts with another network (sac, a
    tanh-Gaussian actor) keeps each trial's final policy; ``bench report --rescore N`` evaluates both on the
    same N episodes, as ``swfp eval`` would, beside the training's numbers, and reuses them next time."""
    from swfp.cli import main
    from swfp.rescore import RESCORE_SEED

    config = GridConfig(**{**tiny_grid(demos).__dict__, "algos": ["bc", "sac"],
                           "settings": {"sac": {"learning_starts": "100", "batch_size": "64"}}})
    assert [r["state"] for r in run_grid(config, tmp_path, workers=2)] == ["done", "done"]
    runs = {algo: tmp_path / "runs" / TASK / algo / "seed0" for algo in ("bc", "sac")}
    assert (runs["bc"] / "policy.safetensors").is_file() and (runs["sac"] / "actor.safetensors").is_file()

    assert main(["bench", "report", str(tmp_path), "--rescore", "24"]) == 0
    capsys.readouterr()
    scores = {algo: json.loads((run / "rescore.json").read_text()) for algo, run in runs.items()}
    for algo, score in scores.items():
        assert (score["episodes"], score["seed"], len(score["returns"])) == (24, RESCORE_SEED, 24)
        assert main(["eval", str(runs[algo]), "--episodes", "24", "--seed", str(RESCORE_SEED), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["returns"] == score["returns"]  # the one evaluator
    assert scores["bc"]["returns"] != scores["sac"]["returns"]
    report = (tmp_path / "report.md").read_text()
    assert f"on the same 24 episodes (episode seeds {RESCORE_SEED}–{RESCORE_SEED + 23}" in report
    for algo in ("bc", "sac"):
        summary = json.loads((runs[algo] / "summary.json").read_text())
        assert (f"| {TASK} | {algo} | seed0 | {summary['return_after']:.1f} | {scores[algo]['return_mean']:.1f} ± "
                in report)
    rows = read_csv_rows(tmp_path / "rescore.csv")
    assert [(r["algorithm"], r["episodes"], r["episode_seed"]) for r in rows] == [
        ("bc", "24", str(RESCORE_SEED)), ("sac", "24", str(RESCORE_SEED))]

    written = {algo: (run / "rescore.json").stat().st_mtime_ns for algo, run in runs.items()}
    assert main(["bench", "report", str(tmp_path), "--rescore", "24"]) == 0  # nothing changed: nothing re-run
    assert {algo: (run / "rescore.json").stat().st_mtime_ns for algo, run in runs.items()} == written


def read_csv_rows(path):
    header, *lines = path.read_text().strip().splitlines()
    return [dict(zip(header.split(","), line.split(","))) for line in lines]


def test_restarted_driver_skips_finished_trials_and_resumes_unfinished(demos, tmp_path):
    config = tiny_grid(demos, steps=400)
    run_grid(GridConfig(**{**config.__dict__, "algos": ["bc"], "settings": {}}), tmp_path, workers=1)  # bc done before
    bc_summary = (tmp_path / "runs" / TASK / "bc" / "seed0" / "summary.json")
    finished_at = bc_summary.stat().st_mtime_ns
    # An swfp trial killed after its first checkpoint (as a killed driver leaves it).
    swfp_job = next(j for j in trial_jobs(config, tmp_path) if j.name.startswith("swfp "))
    kill_after_first_checkpoint(swfp_job.command, swfp_job.run_dir)
    states = {j.name.split()[0]: j.state for j in trial_jobs(config, tmp_path)}
    assert states == {"bc": "done", "swfp": "resume"}

    rows = run_grid(config, tmp_path, workers=2)  # the restarted driver
    assert [r["state"] for r in rows] == ["done", "done"]
    assert bc_summary.stat().st_mtime_ns == finished_at  # skipped, not run again
    history = read_csv(tmp_path / "runs" / TASK / "swfp" / "seed0" / "eval.csv")
    steps = [int(r["step"]) for r in history]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 400
    log = (tmp_path / "runs" / TASK / "swfp" / "seed0.log").read_text()
    assert "--resume" in log
    grid = json.loads((tmp_path / "grid.json").read_text())  # both driver invocations are on record
    assert grid["algos"] == ["bc", "swfp"] and [g["algos"] for g in grid["earlier_invocations"]] == [["bc"]]


def test_time_limit_stops_running_trials_checkpointed_and_resumable(demos, tmp_path):
    """``stop_after``: a trial still running at the limit gets SIGTERM, checkpoints where it is and is
    left resumable; the next driver would continue it (the restart test above shows that part)."""
    config = GridConfig(**{**tiny_grid(demos).__dict__, "algos": ["swfp"], "env_steps": 400_000})
    rows = run_grid(config, tmp_path, workers=1, stop_after=30)
    assert [r["state"] for r in rows] == ["resumable (stopped at the time limit)"]
    run = tmp_path / "runs" / TASK / "swfp" / "seed0"
    stopped_at = torch.load(run / "checkpoint.pt", weights_only=True)["env_step"]
    assert 0 < stopped_at < 400_000 and not (run / "summary.json").exists()
    assert int(read_csv(run / "eval.csv")[-1]["step"]) <= stopped_at
    assert [j.state for j in trial_jobs(config, tmp_path)] == ["resume"]
    with pytest.raises(ValueError, match="stop_after"):
        run_grid(config, tmp_path, stop_after=0)


def test_ctrl_c_to_the_driver_stops_its_trials_checkpointed_and_records_them(demos, tmp_path):
    """A terminal's Ctrl-C reaches the driver's whole process group. The driver alone takes it (each trial
    runs in its own session, so it gets one SIGTERM, from the driver, not a second signal that would end
    it before its checkpoint), stops the trials checkpointed and still writes ``trials.csv`` and its end."""
    args = [sys.executable, "-m", "swfp.cli", "bench", "grid", "--tasks", TASK, "--algos", "swfp", "--seeds", "0",
            "--env-steps", "400000", "--pretrain-steps", "200", "--eval-episodes", "16", "--num-envs", "4",
            "--dataset", f"{TASK}={demos}", *[f"--set=swfp:{k}={v}" for k, v in SWFP_FAST.items()],
            "--workers", "1", "--out", str(tmp_path)]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "runs" / TASK / "swfp" / "seed0"
    deadline = time.time() + 240
    while not (run / "eval.csv").exists() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the trial is in its loop once its first evaluation is written
    assert driver.poll() is None, f"the driver ended before it could be stopped: {driver.stderr.read()}"
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in the driver's terminal does
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 1, stderr  # not every trial is done
    rows = read_csv_rows(tmp_path / "trials.csv")
    assert [r["state"] for r in rows] == ["resumable (stopped by SIGINT to the driver)"], stdout
    stopped_at = torch.load(run / "checkpoint.pt", weights_only=True)["env_step"]
    assert 0 < stopped_at < 400_000 and not (run / "summary.json").exists()
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert grid["stopped_by_signal"] == "SIGINT" and grid["ended"] >= grid["created"]


def test_pending_trials_put_resumable_ones_first(tmp_path):
    """A grid spread over sessions finishes what it started before starting anything new."""
    config = GridConfig(tasks=[TASK], algos=["bc", "swfp"], seeds=[0, 1], env_steps=10)
    runs = {j.name: j.run_dir for j in trial_jobs(config, tmp_path)}
    for name, marker in (("bc Hopper seed 0", "summary.json"), ("swfp Hopper seed 1", "checkpoint.pt")):
        run_dir = runs[name.replace("Hopper", TASK)]
        run_dir.mkdir(parents=True)
        (run_dir / marker).write_text("")
    assert [j.name.replace(TASK, "T") for j in pending(trial_jobs(config, tmp_path))] == [
        "swfp T seed 1", "bc T seed 1", "swfp T seed 0"]


def test_grid_cli_rejects_an_incomplete_or_unknown_grid(tmp_path):
    result = subprocess.run([sys.executable, "-m", "swfp.cli", "bench", "grid", "--tasks", TASK, "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--algos" in result.stderr
    with pytest.raises(ValueError, match="unknown algorithm"):
        GridConfig(tasks=[TASK], algos=["ppo"], seeds=[0], env_steps=10)
