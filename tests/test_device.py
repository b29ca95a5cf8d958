"""Devices (issue 39): ``--device`` / ``device=`` put every network and tensor of a run on the device asked for,
from pre-training through fine-tuning (SWFP and a baseline), evaluation and a resumed run; policies and
checkpoints load on any device; a device the machine lacks is a one-line usage error (exit code 2).

The ``device`` fixture is the CPU everywhere and CUDA where torch sees a GPU (skipped, not failed, elsewhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.serialization

import swfp
from swfp.bandit import misplaced_demonstrations
from swfp.cli import main
from swfp.devices import resolve_device
from swfp.live import Temperature
from swfp.pretrain import PretrainConfig, pretrain
from swfp.runner import RunStopped

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
ENV_STEPS, STOP_AT = 200, 100  # the runs are stopped at STOP_AT and resumed to ENV_STEPS
SETTINGS = {  # tiny runs on the bandit (tests/test_live.py's and tests/test_baselines.py's sizes, smaller)
    "swfp": {"critic_warmup_steps": 50, "batch_size": 64, "block_batch_size": 64, "pool_size": 256,
             "heldout_states": 128, "td_heldout": 128, "blocks_per_run": 4, "max_blocks": 2, "compaction_steps": 20},
    "sac": {"batch_size": 64, "learning_starts": 50},
}


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=CUDA)])
def device(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("device") / "demos.npz"
    misplaced_demonstrations(500, seed=0).save(path)
    return path


def held_tensors(obj, path: str = "learner", seen: set | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor ``obj`` holds, by where it is held: module parameters and buffers, optimiser state, plain
    tensors, walked through swfp's objects, lists and dicts. Left out by design: the replay (numpy, host
    data), Adam's step counters (CPU scalars in torch) and the SWFP temperature (one CPU number, live.py)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, Temperature):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, torch.nn.Module):
        yield from ((f"{path}.{name}", t) for name, t in [*obj.named_parameters(), *obj.named_buffers()])
    elif isinstance(obj, torch.optim.Optimizer):
        yield from ((f"{path}.state.{key}", t) for state in obj.state.values() for key, t in state.items()
                    if key != "step")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from held_tensors(value, f"{path}[{key!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from held_tensors(value, f"{path}[{i}]", seen)
    elif type(obj).__module__.startswith("swfp") and hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            yield from held_tensors(value, f"{path}.{name}", seen)


def assert_on(holder, device: torch.device) -> None:
    """Every tensor of a learner or policy is on ``device``."""
    tensors = dict(held_tensors(holder))
    assert any(isinstance(t, torch.nn.Parameter) for t in tensors.values()), "the walk found the networks"
    elsewhere = {name: str(t.device) for name, t in tensors.items() if t.device != device}
    assert not elsewhere, f"tensors not on {device}: {elsewhere}"


def stop_at(learner, env_step: int) -> None:
    """Make ``learner`` deliver SIGINT to this process once it has trained past ``env_step``: the runner then
    checkpoints that step and raises RunStopped, as a Ctrl-C would."""
    train = learner.train

    def train_then_stop(step: int) -> dict:
        metrics = train(step)
        if step >= env_step:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics
    learner.train = train_then_stop


@pytest.mark.parametrize("algo", ["swfp", "sac"])
def test_the_pipeline_keeps_every_tensor_on_the_requested_device(demos, tmp_path, device, algo, capsys):
    """pretrain -> finetune (stopped) -> resume -> eval, every stage on ``device``, the device in meta.json."""
    expected = resolve_device(device)
    bc, run = tmp_path / "bc", tmp_path / algo
    assert main(["pretrain", "--dataset", str(demos), "--steps", "100", "--hidden-dims", "32", "32", "--euler-steps",
                 "4", "--eval-episodes", "2", "--device", device, "--out", str(bc)]) == 0
    meta = json.loads((bc / "meta.json").read_text())
    assert meta["device"] == str(expected) and meta["torch_threads"] == 1

    def learner():
        return swfp.make(algo, bc, config=SETTINGS[algo], total_env_steps=ENV_STEPS, device=device)

    agent = learner()
    assert agent.device == expected
    stop_at(agent, STOP_AT)
    with pytest.raises(RunStopped):
        agent.learn(out=run, seed=1, num_envs=2, eval_every=STOP_AT, eval_episodes=4, checkpoint_every=STOP_AT)
    assert_on(agent, expected)

    resumed = learner()
    summary = resumed.learn(out=run, seed=1, num_envs=2, eval_every=STOP_AT, eval_episodes=4,
                            checkpoint_every=STOP_AT, resume=True, device=device)
    assert summary["env_steps"] == ENV_STEPS
    assert_on(resumed, expected)
    assert resumed.replay.online.size == ENV_STEPS  # the replay came back from the host, whole
    meta = json.loads((run / "meta.json").read_text())
    assert meta["device"] == str(expected) and [s["device"] for s in meta["resumed"]] == [str(expected)]
    assert meta["resumed"][0]["env_step"] == STOP_AT and meta["resumed"][0]["torch_threads"] == torch.get_num_threads()
    assert "transfer" in summary["seconds_per_env_step"]  # the loop's host<->device copies, a phase of their own
    if expected.type == "cpu":
        assert summary["seconds_per_env_step"]["transfer"] == 0.0  # on the CPU there is nothing to copy

    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "3", "--device", device, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 3
    policy = swfp.load(run, device=device)
    assert_on(policy, expected)


@CUDA
def test_learn_refuses_another_device_than_the_learners(demos, tmp_path):
    bc = tmp_path / "bc"
    assert main(["pretrain", "--dataset", str(demos), "--steps", "20", "--hidden-dims", "16", "--euler-steps", "2",
                 "--eval-episodes", "1", "--device", "cpu", "--out", str(bc)]) == 0
    agent = swfp.make("bc", bc, device="cpu")
    with pytest.raises(ValueError, match=r"built on cpu, not cuda.*from_pretrained\(\.\.\., device='cuda'\)"):
        agent.learn(out=tmp_path / "run", device="cuda")


DEVICE_PAIRS = [("cpu", "cpu"), pytest.param("cpu", "cuda", marks=CUDA), pytest.param("cuda", "cpu", marks=CUDA),
                pytest.param("cuda", "cuda", marks=CUDA)]


@pytest.mark.parametrize("saved_on, loaded_on", DEVICE_PAIRS)
def test_a_policy_saved_on_one_device_acts_the_same_on_another(demos, tmp_path, saved_on, loaded_on):
    """Policies are safetensors (bytes, no device): what a run saves on one device loads on another, with its
    tensors there and the same deterministic actions (up to the devices' float arithmetic)."""
    bc = tmp_path / "bc"
    pretrain(PretrainConfig(dataset=str(demos), steps=50, hidden_dims=(32,), euler_steps=2,
                                 eval_episodes=1), bc, device=saved_on)
    agent = swfp.make("sac", bc, config=SETTINGS["sac"], total_env_steps=60, device=saved_on)
    agent.learn(out=tmp_path / "sac", num_envs=2, eval_every=60, eval_episodes=2)
    obs = np.random.default_rng(0).uniform(-1, 1, (16, 2)).astype(np.float32)
    for run, trained in ((bc, swfp.load(bc, device=saved_on)), (tmp_path / "sac", agent.policy())):
        moved = swfp.load(run, device=loaded_on)
        assert moved.device == resolve_device(loaded_on)
        assert_on(moved, resolve_device(loaded_on))
        np.testing.assert_allclose(moved.predict(obs, deterministic=True), trained.predict(obs, deterministic=True),
                                   atol=1e-5)


def test_a_checkpoint_written_on_a_gpu_resumes_where_there_is_none(demos, tmp_path, monkeypatch):
    """A GPU run's checkpoint.pt holds CUDA tensors (torch.save tags each storage with its device); a plain
    ``torch.load`` of it fails on a machine without CUDA. The runner reads it onto the host, so the run goes on.

    Written here on the CPU with every storage tagged ``cuda:0``, as a GPU run writes it."""
    bc, run = tmp_path / "bc", tmp_path / "run"
    pretrain(PretrainConfig(dataset=str(demos), steps=50, hidden_dims=(32,), euler_steps=2,
                                 eval_episodes=1), bc, device="cpu")
    agent = swfp.make("swfp", bc, config=SETTINGS["swfp"], total_env_steps=ENV_STEPS, device="cpu")
    stop_at(agent, STOP_AT)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        with pytest.raises(RunStopped):
            agent.learn(out=run, num_envs=2, eval_every=STOP_AT, eval_episodes=2, checkpoint_every=STOP_AT)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(run / "checkpoint.pt", weights_only=True)
    resumed = swfp.make("swfp", bc, config=SETTINGS["swfp"], total_env_steps=ENV_STEPS, device="cpu")
    summary = resumed.learn(out=run, num_envs=2, eval_every=STOP_AT, eval_episodes=2, checkpoint_every=STOP_AT,
                            resume=True)
    assert summary["env_steps"] == ENV_STEPS
    assert_on(resumed, torch.device("cpu"))


def test_resolve_device_names():
    assert resolve_device("cpu") == resolve_device("CPU") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                                      else torch.device("cpu"))
    for bogus in ("bogus", "gpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(bogus)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_names_the_problem_and_the_fix(name):
    with pytest.raises(ValueError) as error:
        resolve_device(name)
    message = str(error.value)
    assert f"device {name!r} asked for" in message and "CUDA" in message and "--device cpu" in message


DEVICE_COMMANDS = [["pretrain", "--dataset", "d.npz", "--out", "x"], ["finetune", "bc", "--out", "x"],
                   ["eval", "run"], ["expert", "--task", "Hopper-v5", "--out", "x"], ["quickstart", "--out", "x"],
                   ["bench", "bc", "--out", "x"], ["bench", "critic", "--out", "x"],
                   ["bench", "compaction", "run", "--out", "x"], ["bench", "compute", "--out", "x"],
                   ["bench", "loop", "run", "--out", "x"], ["bench", "grid", "--preset", "small", "--out", "x"]]


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_that_computes_reports_a_bad_device_as_a_usage_error(command, tmp_path, monkeypatch, capsys):
    """Before it reads anything or writes anything: exit code 2, one line naming the device."""
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--device", "bogus"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"swfp {command[0]}: error: unknown device 'bogus'") and error.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "swfp.cli", "eval", "run", "--device", "cuda"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "swfp eval: error: device 'cuda' asked for" in proc.stderr and "--device cpu" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
