"""Action chunks in fine-tuning (Q-chunking's backup, issue 38): chunk transitions from data and from the
environment, the critic's γ^k, success rates, and fine-tuning a chunked flow on OGBench's cube task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from swfp.buffer import Batch
from swfp.chunks import chunk_transitions, discounted_returns, execute_chunk
from swfp.critic import Critic, CriticConfig
from swfp.envs import make_vector_env
from swfp.evaluate import success_interval
from swfp.logger import read_csv

GAMMA = 0.9


def test_demonstrations_become_chunks_that_never_cross_an_episode_end():
    # two episodes: rows 0-3 end by timeout, rows 4-6 by termination; actions are their row numbers
    n = 7
    obs = np.arange(n, dtype=np.float32)[:, None]
    actions = np.arange(n, dtype=np.float32)[:, None]
    rewards = np.arange(1, n + 1, dtype=np.float32)
    terminals = np.zeros(n, bool)
    terminals[6] = True
    timeouts = np.zeros(n, bool)
    timeouts[3] = True
    rows = chunk_transitions(obs, actions, rewards, obs + 100, terminals, timeouts, horizon=3, gamma=GAMMA)
    np.testing.assert_array_equal(rows["actions"], [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3],
                                                    [4, 5, 6], [5, 6, 6], [6, 6, 6]])  # padded with the last action
    np.testing.assert_array_equal(rows["steps"], [3, 3, 2, 1, 3, 2, 1])
    np.testing.assert_allclose(rows["rewards"][0], 1 + GAMMA * 2 + GAMMA ** 2 * 3)
    np.testing.assert_allclose(rows["rewards"][2], 3 + GAMMA * 4)  # row 2's chunk stops at its episode's end
    np.testing.assert_array_equal(rows["next_observations"][:, 0], [102, 103, 103, 103, 106, 106, 106])
    np.testing.assert_array_equal(rows["terminals"], [0, 0, 0, 0, 1, 1, 1])  # only the terminated episode's
    with pytest.raises(ValueError, match="rewards after its last executed action"):
        discounted_returns(np.ones((1, 3)), np.array([2]), GAMMA)


def test_a_chunk_runs_open_loop_and_stops_where_its_episode_ends():
    venv = make_vector_env("Pendulum-v1", 1, seed=0)  # 200-step episodes, never terminated
    obs, _ = venv.reset(seed=0)
    chunk = np.zeros((1, 3), np.float32)  # three 1-D actions
    for _ in range(66):  # 198 steps
        obs, rewards, terminated, truncated, real_next, steps = execute_chunk(venv, chunk, 3)
        assert steps[0] == 3 and not truncated[0] and np.all(rewards < 0)
    obs, rewards, terminated, truncated, real_next, steps = execute_chunk(venv, chunk, 3)
    assert steps[0] == 2 and truncated[0] and rewards[0, 2] == 0.0  # the episode's last two steps, then it stops
    assert not np.array_equal(obs, real_next)  # the next episode's first state, and the ended one's last
    with pytest.raises(ValueError, match="--num-envs 1"):
        execute_chunk(make_vector_env("Pendulum-v1", 2, seed=0), np.zeros((2, 3)), 3)


def test_the_critic_discounts_a_chunk_by_gamma_to_its_length():
    critic = Critic(3, 2, CriticConfig(gamma=GAMMA), torch.device("cpu"))
    obs, act = torch.randn(4, 3), torch.rand(4, 2) * 2 - 1
    rewards, terminals = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])
    one = critic.td_target(Batch(obs, act, rewards, obs, terminals, torch.ones(4)), act)
    three = critic.td_target(Batch(obs, act, rewards, obs, terminals, torch.full((4,), 3.0)), act)
    np.testing.assert_allclose((three - rewards)[:3], (GAMMA ** 2 * (one - rewards))[:3], rtol=1e-5)
    assert three[3] == one[3] == rewards[3]  # a terminal row does not bootstrap, whatever its length


def test_success_rates_come_with_wilsons_interval():
    assert success_interval([False] * 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert success_interval([True] * 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    low, high = success_interval([True, False] * 25)
    assert low < 0.5 < high and high - low == pytest.approx(0.27, abs=0.01)


@pytest.fixture(scope="module")
def cube_bc(tmp_path_factory):
    pytest.importorskip("ogbench", reason="the manipulation extra: pip install -e \".[manipulation]\"")
    from swfp.manipulation import oracle_demonstrations
    from swfp.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("cube")
    oracle_demonstrations("cube-single-task2", "task", episodes=4, seed=0).save(out / "task.npz")
    pretrain(PretrainConfig(dataset=str(out / "task.npz"), steps=50, batch_size=64, eval_episodes=1,
                            hidden_dims=(64, 64)), out / "bc", "cpu")
    return out / "bc"


@pytest.mark.parametrize("algo", ["swfp", "sac", "fql", "dsrl", "dipo"])  # the methods of the manipulation grid, and SAC
def test_a_chunked_flow_fine_tunes_on_the_cube_task_with_chunk_transitions(cube_bc, tmp_path, algo):
    import swfp

    fast = {"swfp": {"critic_warmup_steps": 20, "block_every": 50, "batch_size": 32},
            "sac": {"learning_starts": 20, "batch_size": 32},
            "fql": {"critic_warmup_steps": 20, "batch_size": 32},
            "dsrl": {"critic_warmup_steps": 20, "batch_size": 32},
            "dipo": {"critic_warmup_steps": 20, "batch_size": 32}}[algo]
    agent = swfp.make(algo, cube_bc, config=fast, device="cpu")
    summary = agent.learn(total_env_steps=120, out=tmp_path / algo, eval_every=60, eval_episodes=2)
    assert summary["env_steps"] >= 120 and "success_rate_after" in summary  # the cube task reports success
    online = agent.replay.online
    steps = online.steps[:len(online)]
    assert steps.max() == 5 and np.all(steps >= 1) and online.actions.shape[1] == 5 * 5  # H = 5 flat chunks
    full = steps == 5  # 5 steps of reward -1 (the cube is not at its goal): the chunk's discounted sum
    gamma = agent.config.critic.gamma
    np.testing.assert_allclose(online.rewards[:len(online)][full], -(1 - gamma ** 5) / (1 - gamma), rtol=1e-5)
    if agent.use_demonstrations:  # the demonstrations as chunk rows too (SAC from scratch has none)
        offline = agent.replay.offline
        assert offline.actions.shape[1] == 25 and offline.steps[:len(offline)].max() == 5
    evaluations = read_csv(tmp_path / algo / "eval.csv")
    assert all(0.0 <= row["success_rate"] <= 1.0 and "det_success_rate" in row for row in evaluations)
    loaded = swfp.load(tmp_path / algo, device="cpu")
    assert loaded.action_chunk == 5 and loaded.predict(np.zeros((3, 28), np.float32)).shape == (3, 5, 5)


def test_reinflow_refuses_a_chunked_flow_with_what_to_do(cube_bc):
    import swfp

    with pytest.raises(ValueError, match="reinflow does not fine-tune action-chunked policies"):
        swfp.make("reinflow", cube_bc, device="cpu")


def test_eval_on_another_cube_task_with_the_same_spaces_and_a_clear_error_otherwise(cube_bc, capsys):
    from swfp.cli import main

    assert main(["eval", str(cube_bc), "--task", "cube-single-task4", "--episodes", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "cube-single-task4" and out["success_rate"] in (0.0, 1.0)  # evaluated on task 4's goal
    assert main(["eval", str(cube_bc), "--task", "cube-double-task2", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "--task cube-double-task2" in err and "(37, 5" in err and "(28, 5)" in err and "Traceback" not in err
