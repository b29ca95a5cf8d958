"""Every method's run is a policy (issue 42): ``swfp.load`` reads it, ``predict`` keeps one contract,
``log_prob`` is exact where the method has a density and names the method where not, ``swfp eval
--recorded`` reproduces the run's last evaluation, and a broken saved policy is one line, exit 2.

Run with ``OMP_NUM_THREADS=1``: the reproduction is bit for bit on one machine and thread count.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import swfp
from swfp.algorithms import ALGORITHMS
from swfp.cli import main
from swfp.flow import standard_normal_log_prob
from swfp.logger import read_csv
from test_baselines import FAST
from test_live import BANDIT

# the methods whose policy has an exact density (flow cascades, tanh-Gaussian actors, DSRL's steered flow)
EXACT_DENSITY = {"swfp", "bc", "bptt", "dipo", "dsrl", "sac", "rlpd"}
ENV_STEPS = {"reinflow": 400}  # two PPO iterations of FAST's 200-step rollouts; the others 300


def settings(algo: str) -> dict:
    """Short-run settings: SWFP's from tests/test_live.py, the baselines' from tests/test_baselines.py."""
    if algo == "swfp":
        return BANDIT
    return {key: json.loads(value) for key, value in FAST.get(algo, {}).items()}


def run_json(capsys, *args) -> dict:
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_every_methods_run_loads_predicts_and_reproduces_its_last_evaluation(bandit_bc, tmp_path, capsys, algo):
    steps = ENV_STEPS.get(algo, 300)
    agent = swfp.make(algo, bandit_bc / "bc", config=settings(algo), total_env_steps=steps)
    run = tmp_path / algo
    agent.learn(out=run, seed=3, num_envs=4, eval_every=steps // 2, eval_episodes=16)

    policy = swfp.load(run)
    assert policy.task_id == "swfp/QuadraticBandit-v0" and policy.action_chunk == 1
    obs = np.random.default_rng(0).uniform(-1, 1, (32, 2)).astype(np.float32)
    deterministic = policy.predict(obs, deterministic=True)
    assert deterministic.shape == (32, 2) and np.isfinite(deterministic).all()
    np.testing.assert_array_equal(policy.predict(obs, deterministic=True), deterministic)
    np.testing.assert_array_equal(policy.normalized_actions(obs, deterministic=True),
                                  agent.policy().normalized_actions(obs, deterministic=True))  # the run's weights
    stochastic = policy.predict(obs)
    assert stochastic.shape == (32, 2) and np.isfinite(stochastic).all() and np.abs(stochastic).max() <= 1
    assert policy.predict(obs[0]).shape == (2,)
    if algo in EXACT_DENSITY:
        log_prob = policy.log_prob(obs, stochastic)
        assert log_prob.shape == (32,) and np.isfinite(log_prob).all()
    else:
        with pytest.raises(NotImplementedError, match=f"the {algo} policy has no exact log-density"):
            policy.log_prob(obs, stochastic)

    last = read_csv(run / "eval.csv")[-1]
    assert (last["step"], last["eval_episodes"], last["eval_seed"]) == (steps, 16, 3 + 1_000_000)
    for deterministic_flag, column in ((False, "return_mean"), (True, "det_return_mean")):
        flags = ["--deterministic"] if deterministic_flag else []
        again = run_json(capsys, "eval", run, "--recorded", *flags)
        assert again["return_mean"] == last[column], (column, again)
        explicit = run_json(capsys, "eval", run, "--episodes", 16, "--seed", 3 + 1_000_000, *flags)
        assert explicit["returns"] == again["returns"]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["eval_episodes"], summary["eval_seed"]) == (16, 3 + 1_000_000)


def test_dsrl_and_gaussian_densities_are_those_they_sample_from(bandit_bc):
    """DSRL: log π(a|s) = log p(w|s) − Σ log|det ∂T_k| with w = b·tanh(u), the density it samples with.
    SAC's tanh-Gaussian: the density its reparameterised sample reports."""
    torch.manual_seed(0)
    dsrl = swfp.make("dsrl", bandit_bc / "bc")
    actor, flow, bound = dsrl.sac.actor, dsrl.flow, dsrl.config.noise_bound
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.03 * torch.randn_like(p))  # moved from its initialisation, its noise kept off tanh's flat ends
        obs = torch.rand(64, 2) * 2 - 1
        y, log_prob_y = actor.sample(obs)
        actions, flow_log_prob = flow.sample(obs, noise=bound * y, with_log_prob=True)
        expected = flow_log_prob - standard_normal_log_prob(bound * y) + log_prob_y - 2 * math.log(bound)
        policy = dsrl.policy()
        torch.testing.assert_close(policy.normalized_log_prob(obs, actions), expected, atol=2e-3, rtol=1e-4)
        np.testing.assert_allclose(policy.log_prob((obs * policy.obs_std + policy.obs_mean).numpy(), actions.numpy()),
                                   expected.numpy(), atol=2e-3)  # the bandit's box is [-1, 1]: no unit change
        sampled, log_prob = actor.sample(obs)
        torch.testing.assert_close(actor.log_prob(obs, sampled), log_prob, atol=1e-3, rtol=1e-4)


def test_make_takes_a_dict_config_typed_like_set(bandit_bc):
    rlpd = swfp.make("rlpd", bandit_bc / "bc", config={"utd_ratio": 2, "critic": {"layer_norm": False}})
    assert isinstance(rlpd, swfp.RLPD) and rlpd.config.utd_ratio == 2
    assert rlpd.config.critic.layer_norm is False and rlpd.config.critic.ensemble_size == 10  # RLPD's default kept
    with pytest.raises(ValueError, match="valid keys"):
        swfp.make("dsrl", bandit_bc / "bc", config={"noise_bond": 2.0})
    with pytest.raises(ValueError, match="not a valid int"):
        swfp.make("sac", bandit_bc / "bc", config={"batch_size": 1.5})
    assert swfp.make("bc", bandit_bc / "bc").config is None and swfp.BC is ALGORITHMS["bc"]


def break_file(run, name: str, how: str) -> None:
    path = run / name
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text(how)


def actor_json(run, **changes) -> str:
    spec = json.loads((run / "actor.json").read_text())
    for key, value in changes.items():
        target, _, leaf = key.rpartition(".")
        (spec[target] if target else spec)[leaf] = value
    return json.dumps(spec)


@pytest.mark.parametrize("name, how, message", [
    ("actor.safetensors", "delete", "actor.safetensors is missing; copy the whole run directory"),
    ("actor.safetensors", "truncate", "actor.safetensors is corrupt or not a safetensors file"),
    ("actor.json", "delete", "actor.json is missing beside actor.safetensors"),
    ("actor.json", "[1, 2]", "actor.json is not a swfp file"),
    ("actor.json", "{not json", "actor.json is not valid JSON"),
    ("actor.json", '{"algorithm": "sac", "kind": "tanh-gaussian"}', "actor.json has format version None"),
    ("actor.json", lambda run: actor_json(run, kind="mlp"), "names actor kind 'mlp'"),
    ("actor.json", lambda run: actor_json(run, **{"actor.hidden_dims": [8]}), "does not match the model"),
    ("actor.json", lambda run: actor_json(run, obs_dim=3), "observation statistics do not match obs_dim 3"),
    ("actor.json", lambda run: actor_json(run, action_low=[-1]), "actor.json is incomplete or does not match"),
])
def test_a_broken_saved_policy_is_one_line_naming_the_file_and_the_fix(bandit_bc, tmp_path, capsys, name, how,
                                                                       message):
    run = swfp.make("sac", bandit_bc / "bc").save(tmp_path / "sac")
    assert swfp.load(run).algorithm == "sac"
    break_file(run, name, how(run) if callable(how) else how)
    assert main(["eval", str(run), "--episodes", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("swfp eval: error: ") and error.count("\n") == 1 and message in error, error
    assert str(run) in error


def test_a_run_without_a_policy_yet_and_old_eval_files_say_so(bandit_bc, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "has saved no policy yet" in capsys.readouterr().err
    pretrained = bandit_bc / "bc"  # a pre-training run records its evaluation's seeds too
    last = read_csv(pretrained / "eval.csv")[-1]
    assert run_json(capsys, "eval", pretrained, "--recorded")["return_mean"] == last["return_mean"]
    assert main(["eval", str(pretrained), "--recorded", "--seed", "1"]) == 2
    assert "drop --episodes and --seed" in capsys.readouterr().err
    old = tmp_path / "old"
    swfp.load(pretrained).save(old)
    (old / "eval.csv").write_text("step,wall_time,return_mean\n0,1.0,-0.5\n")
    assert main(["eval", str(old), "--recorded"]) == 2
    assert "records no evaluation seeds" in capsys.readouterr().err
