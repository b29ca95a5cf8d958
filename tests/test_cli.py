"""The command line end to end on a tiny budget: expert -> demos -> pretrain -> eval, and its errors."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import swfp
from swfp.data import load_dataset


def swfp_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "swfp.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"swfp {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    swfp_cli("expert", "--task", "Hopper-v5", "--env-steps", 400, "--set", "learning_starts=200", "--eval-every", 200,
             "--eval-episodes", 1, *(f"--set=choice.{n}_episodes=2" for n in ("expert", "medium", "fresh")),
             "--out", root / "expert")
    swfp_cli("demos", "--task", "Hopper-v5", "--expert", root / "expert", "--quality", "medium", "--episodes", 4,
             "--out", root / "demos.npz")
    swfp_cli("pretrain", "--dataset", root / "demos.npz", "--steps", 60, "--hidden-dims", 32, 32,
             "--euler-steps", 4, "--eval-episodes", 2, "--eval-every", 30, "--seed", 1, "--out", root / "bc")
    return root


def test_action_chunks_pretrain_and_run_open_loop(pipeline):
    """H = 2: the flow outputs two actions per call and evaluation executes them open-loop."""
    swfp_cli("pretrain", "--dataset", pipeline / "demos.npz", "--steps", 20, "--hidden-dims", 16, "--euler-steps", 2,
             "--action-chunk", 2, "--eval-episodes", 1, "--out", pipeline / "bc-chunk")
    policy = swfp.load(pipeline / "bc-chunk")
    assert policy.action_chunk == 2 and policy.cascade.act_dim == 6
    obs = np.zeros((4, 11), np.float32)
    actions = policy.predict(obs)
    assert actions.shape == (4, 2, 3)
    assert np.isfinite(policy.log_prob(obs, actions)).all()
    out = json.loads(swfp_cli("eval", pipeline / "bc-chunk", "--episodes", 2, "--json").stdout)
    assert out["episodes"] == 2 and out["episode_length_mean"] >= 1


def test_pipeline_writes_what_it_promises(pipeline):
    for name in ("expert.json", "expert/actor.safetensors", "medium/actor.safetensors", "meta.json", "config.json"):
        assert (pipeline / "expert" / name).is_file(), name
    for name in ("policy.json", "policy.safetensors", "config.json", "meta.json", "summary.json", "train.csv",
                 "eval.csv", "learning_curve.png"):
        assert (pipeline / "bc" / name).is_file(), name
    assert any((pipeline / "bc" / "tb").iterdir())
    config = json.loads((pipeline / "bc" / "config.json").read_text())
    assert config["task"] == "Hopper-v5" and config["hidden_dims"] == [32, 32] and config["euler_steps"] == 4
    meta = json.loads((pipeline / "bc" / "meta.json").read_text())
    assert meta["seed"] == 1
    assert meta["dataset_sha256"] == load_dataset(pipeline / "demos.npz").fingerprint()  # which data, exactly


def test_eval_json_and_python_api(pipeline):
    out = json.loads(swfp_cli("eval", pipeline / "bc", "--episodes", 3, "--seed", 0, "--json").stdout)
    for key in ("return_mean", "return_std", "return_iqm", "episodes", "episode_length_mean", "success_rate"):
        assert key in out
    assert out["episodes"] == 3 and out["success_rate"] is None
    again = json.loads(swfp_cli("eval", pipeline / "bc", "--episodes", 3, "--seed", 0, "--json",
                                "--deterministic").stdout)
    same = json.loads(swfp_cli("eval", pipeline / "bc", "--episodes", 3, "--seed", 0, "--json",
                               "--deterministic").stdout)
    assert again["returns"] == same["returns"]

    policy = swfp.load(pipeline / "bc")
    obs = np.random.default_rng(0).normal(size=(8, 11)).astype(np.float32)
    actions = policy.predict(obs)
    assert actions.shape == (8, 3)
    assert np.isfinite(policy.log_prob(obs, actions)).all()


def test_eval_video(pipeline, tmp_path):
    proc = swfp_cli("eval", pipeline / "bc", "--episodes", 1, "--video", tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    video = tmp_path / "episode_0.mp4"
    assert video.stat().st_size > 1000
    import imageio.v2 as imageio
    frame = imageio.get_reader(video).get_data(0)
    assert frame.ndim == 3 and frame.std() > 1  # a real rendered picture, not a blank


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--dataset", "missing.npz", "--out", "x"], "missing.npz"),
    (["eval", "nowhere"], "no swfp policy"),
    (["expert", "--task", "Hoper-v5", "--out", "x"], "unknown task 'Hoper-v5'"),
    (["demos", "--task", "Hoper-v5", "--out", "x"], "unknown task 'Hoper-v5'"),
    (["pretrain", "--dataset", "d.npz", "--steps", "0", "--out", "x"], "must be > 0"),
])
def test_bad_input_gets_a_clear_error(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "swfp.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_policy_with_non_finite_weights_is_refused(bandit_bc, tmp_path, capsys):
    """A diverged run's NaN weights would otherwise evaluate silently (Gymnasium only warns of a NaN reward)."""
    from swfp.cli import main
    from swfp.runio import CheckpointError, load_tensors, save_tensors

    run = shutil.copytree(bandit_bc / "bc", tmp_path / "bc")
    tensors = load_tensors(run / "policy.safetensors")
    name = next(k for k in tensors if k.startswith("flow.") and k.endswith("weight"))
    tensors[name][0, 0] = float("nan")
    save_tensors(run / "policy.safetensors", tensors)
    with pytest.raises(CheckpointError, match=re.escape(f"{run / 'policy.safetensors'} holds NaN or infinite "
                                                        f"values in ['{name}']")):
        swfp.load(run)
    assert main(["eval", str(run), "--episodes", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("swfp eval: error: checkpoint ") and error.count("\n") == 1


def test_eval_video_into_a_directory_that_cannot_be_made(bandit_bc, tmp_path, capsys):
    """Checked before any episode runs, with the directory and the reason, not a bare [Errno 20] at the end."""
    from swfp.cli import main

    (tmp_path / "notes.txt").write_text("a file, not a directory")
    video = tmp_path / "notes.txt" / "videos"
    assert main(["eval", str(bandit_bc / "bc"), "--episodes", "1", "--video", str(video)]) == 2
    error = capsys.readouterr().err
    assert f"cannot create the video directory {video}: {tmp_path / 'notes.txt'} is a file" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize("command", [["expert"], ["demos"], ["pretrain"], ["eval"], ["quickstart"], ["algos"],
                                     ["finetune"], ["bench", "envs"], ["bench", "bc"], ["bench", "critic"],
                                     ["bench", "grid"], ["bench", "report"], ["bench", "compaction"]])
def test_every_subcommand_has_help(command, capsys):
    from swfp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: swfp " + " ".join(command) in capsys.readouterr().out


def test_quickstart_makes_demos_pretrains_finetunes_and_compares(tmp_path):
    """The README's main job at a toy size: every stage runs and the comparison is printed."""
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "swfp.cli", "quickstart", "--steps", "200", "--env-steps", "200",
                           "--episodes", "3", "--eval-episodes", "3", "--out", str(out), "--set",
                           "critic_warmup_steps=20", "--set", "block_grad_steps=10", "--set", "blocks_per_run=2",
                           "--set", "pool_size=256", "--set", "heldout_states=128", "--set", "compaction_steps=10"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trust region:" in proc.stdout and "SWFP" in proc.stdout and "stochastic:" in proc.stdout
    assert (out / "hopper-v5-medium.npz").is_file()
    for run in ("bc", "swfp"):
        assert (out / run / "policy.json").is_file() and (out / run / "learning_curve.png").is_file()
