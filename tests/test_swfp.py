"""SWFP's online loop on the one-step bandit (known optimum): it improves, appends several blocks
within a short budget, writes what it promises, and resumes after being killed."""

import json
import signal
import subprocess
import sys
import time

import torch

import swfp
from swfp.logger import read_csv

FAST = ["--block-grad-steps", "60", "--critic-warmup-steps", "200", "--blocks-per-run", "6", "--max-blocks", "4",
        "--num-envs", "4", "--eval-episodes", "64"]


def test_swfp_improves_the_bandit_with_several_blocks(bandit_bc):
    """The demonstrator is off by ‖(−0.4, 0.3)‖ = 0.5, i.e. reward −0.5 (optimum 0). A short run of the
    live schedule must close most of that gap on the deterministic policy and clearly improve the
    stochastic one."""
    agent = swfp.SWFP.from_pretrained(bandit_bc / "bc", config=swfp.SWFPConfig(
        tau=0.2, tau_radius=0.2,  # 6 blocks of ≈ 0.2 action move can cross the 0.5 gap (0.1 is for MuJoCo)
        block_batch_size=64, critic_warmup_steps=200, blocks_per_run=6, max_blocks=4))
    out = bandit_bc / "swfp"
    summary = agent.learn(total_env_steps=1200, out=out, num_envs=4, eval_every=300, eval_episodes=64)
    history = read_csv(out / "eval.csv")
    assert history[-1]["det_return_mean"] > 0.2 * history[0]["det_return_mean"]  # most of the gap closed
    assert history[-1]["det_return_mean"] > -0.05
    assert summary["return_after"] > summary["return_before"] + 0.2
    status = summary["status"]
    assert status["blocks_accepted"] + status["blocks_rejected"] == 6  # the schedule scales with the budget
    assert status["blocks_compactions"] >= 1
    assert status["w2_upper"] <= status["trust_bound"]
    for name in ("policy.json", "policy.safetensors", "checkpoint.pt", "eval.csv", "train.csv", "summary.json",
                 "config.json", "meta.json", "learning_curve.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["config"]["tau"] == 0.2
    bc_meta = json.loads((bandit_bc / "bc" / "meta.json").read_text())  # the replay's demonstrations, recorded
    assert json.loads((out / "meta.json").read_text())["dataset_sha256"] == bc_meta["dataset_sha256"]
    tuned = swfp.load(out)  # the fine-tuned policy loads like any other
    assert tuned.cascade.num_blocks == status["blocks"] + 1  # the frozen blocks and the live one
    assert len(read_csv(out / "blocks.csv")) == 6  # every judged block is logged


def test_block_schedule_caps_the_block_interval_and_keeps_short_runs_several_blocks(bandit_bc):
    """S = min(block_every, total / blocks_per_run): a block every 2000 env steps on long budgets,
    at least 20 blocks on short ones; ``block_every=None`` spreads exactly ``blocks_per_run`` blocks."""
    def interval(total, **config):
        return swfp.SWFP.from_pretrained(bandit_bc / "bc", config=swfp.SWFPConfig(**config),
                                         total_env_steps=total).block_every
    assert [interval(total) for total in (1_000_000, 300_000, 100_000, 15_000, 10)] == [2000, 2000, 2000, 750, 1]
    assert interval(300_000, block_every=None) == 15_000 and interval(300_000, block_every=None, blocks_per_run=60) == 5000
    assert interval(300_000, block_every=2000, blocks_per_run=1) == 2000


def kill_after_first_checkpoint(args: list[str], out) -> None:
    """Start ``args`` (a ``swfp finetune`` command), SIGKILL it as soon as it has written a checkpoint."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()


def test_killed_run_resumes_without_gap_or_duplicate(bandit_bc, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "swfp.cli", "finetune", str(bandit_bc / "bc"), "--env-steps", "1600",
            "--eval-every", "200", "--checkpoint-every", "400", "--out", str(out), *FAST]
    kill_after_first_checkpoint(args, out)
    resumed = subprocess.run(args[:5] + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_csv(out / "eval.csv")
    assert [int(r["step"]) for r in rows] == list(range(0, 1601, 200))  # every evaluation once, none missing
    wall = [r["wall_time"] for r in rows]
    assert wall == sorted(wall), f"wall_time restarted at the resume: {wall}"
    assert json.loads((out / "summary.json").read_text())["env_steps"] == 1600


def test_stopped_run_checkpoints_where_it_stopped_and_resumes(bandit_bc, tmp_path):
    """SIGTERM (a cluster's pre-emption, ``bench grid --stop-after``) lets the env step finish,
    checkpoints that step (not the last periodic one: there is none before the end here) and exits
    with 143 naming it, its policy of that step saved; the resumed run repeats nothing, and its wall
    time covers both sessions."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "swfp.cli", "finetune", str(bandit_bc / "bc"), "--env-steps", "3200",
            "--eval-every", "400", "--checkpoint-every", "3200", "--out", str(out), *FAST]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (
            (out / "eval.csv").is_file() and len(read_csv(out / "eval.csv")) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be stopped: {proc.stderr.read()}"
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    stopped = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 400 <= stopped["env_step"] < 3200 and f"at env step {stopped['env_step']} of 3200" in stderr
    assert "--resume" in stderr and not (out / "summary.json").exists()
    assert int(read_csv(out / "eval.csv")[-1]["step"]) <= stopped["env_step"]
    # The policy of that moment is saved beside the checkpoint: an unfinished run can be evaluated.
    saved = swfp.load(out).cascade
    assert saved.num_blocks == len(stopped["learner"]["blocks"]) + 1  # the frozen blocks, then the live one
    live = stopped["learner"]["live"]["block"]
    assert all(torch.equal(v, live[k]) for k, v in saved.blocks[-1].state_dict().items())
    assert all(torch.equal(v, stopped["learner"]["base"][k]) for k, v in saved.base.state_dict().items())

    resumed = subprocess.run(args[:5] + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["step"]) for r in read_csv(out / "eval.csv")] == list(range(0, 3201, 400))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_seconds"] > sum(stopped["phase_seconds"].values()) > 0
