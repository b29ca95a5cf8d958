"""OGBench's cube tasks (issue 38): friendly ids, and demonstrations made here by OGBench's scripted oracle."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ogbench", reason="the manipulation extra: pip install -e \".[manipulation]\"")

from swfp.cli import main  # noqa: E402
from swfp.data import load_dataset  # noqa: E402
from swfp.envs import BUILTIN_TASKS, TaskError, TaskSpec, env_dims, make_env, make_raw_env, task_spec  # noqa: E402
from swfp.manipulation import oracle_demonstrations  # noqa: E402


def episodes_of(dataset) -> list[slice]:
    ends = np.flatnonzero(dataset.terminals | dataset.timeouts) + 1
    return [slice(a, b) for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]


def test_cube_tasks_are_reachable_by_friendly_id_with_ogbench_sparse_reward():
    spec = task_spec("cube-single-task2")
    assert (spec.max_episode_steps, spec.action_chunk, spec.gym_id) == (200, 5, "cube-single-singletask-task2-v0")
    assert env_dims("cube-single-task2") == (28, 5) and env_dims("cube-double-task1") == (37, 5)
    env = make_env("cube-single-task2", seed=0)
    _, reward, terminated, truncated, info = env.step(np.zeros(5, np.float32))
    assert reward == -1.0 and not terminated and info["success"] is False  # 1 cube, not at its goal


def test_a_task_whose_package_is_missing_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(BUILTIN_TASKS, "cube-nowhere", TaskSpec("cube-nowhere", gym_id="cube-nowhere-v0",
                                                                requires="swfp_no_such_package", extra="manipulation"))
    with pytest.raises(TaskError, match=r'needs the swfp_no_such_package package .* pip install -e "\.\[manipulation\]"'):
        make_raw_env("cube-nowhere")


@pytest.fixture(scope="module")
def solved():
    return oracle_demonstrations("cube-single-task2", "task", episodes=2, seed=3)


def test_task_demonstrations_solve_the_task_as_an_evaluation_episode_ends(solved):
    assert solved.validate("cube-single-task2") is solved
    assert solved.metadata["episode_successes"] == [True, True] and solved.metadata["success_rate"] == 1.0
    assert set(np.unique(solved.rewards)) == {-1.0, 0.0}
    for episode in episodes_of(solved):
        # the single-task episode terminates at success: its last row, and only that one, is terminal with reward 0
        assert solved.terminals[episode][-1] and not solved.terminals[episode][:-1].any()
        assert solved.rewards[episode][-1] == 0.0 and (solved.rewards[episode][:-1] == -1.0).all()
        assert episode.stop - episode.start < task_spec("cube-single-task2").max_episode_steps
    # within an episode each row's next observation is the next row's observation
    first = episodes_of(solved)[0]
    np.testing.assert_array_equal(solved.next_observations[first][:-1], solved.observations[first][1:])
    assert np.abs(solved.actions).max() <= 1.0


def test_oracle_demonstrations_are_reproducible_from_their_seed_and_leave_numpy_alone(solved):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    again = oracle_demonstrations("cube-single-task2", "task", episodes=2, seed=3)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's global generator is restored
    np.testing.assert_array_equal(again.actions, solved.actions)
    np.testing.assert_array_equal(again.observations, solved.observations)
    other = oracle_demonstrations("cube-single-task2", "task", episodes=1, seed=4)
    assert not np.array_equal(other.actions[:10], solved.actions[:10])


def test_play_demonstrations_are_labelled_with_the_tasks_reward():
    play = oracle_demonstrations("cube-single-task2", "play", episodes=1, seed=0, episode_steps=300)
    assert play.validate("cube-single-task2") is play and len(play) == 300
    assert play.timeouts[-1] or play.terminals[-1]  # the play episode ends at its length
    # reward 0 exactly where the row is terminal (the single-task episode would end there), -1 elsewhere
    np.testing.assert_array_equal(play.rewards == 0.0, play.terminals)
    assert set(np.unique(play.rewards)) <= {-1.0, 0.0}
    assert play.metadata["quality"] == "play" and play.metadata["episode_steps"] == 300


def test_cli_makes_oracle_demonstrations_and_refuses_qualities_that_do_not_apply(tmp_path, capsys):
    out = tmp_path / "cube.npz"
    assert main(["demos", "--task", "cube-single-task1", "--episodes", "1", "--out", str(out)]) == 0
    assert "oracle success 100% of 1 episodes" in capsys.readouterr().out
    assert load_dataset(out).metadata["source"] == "ogbench-oracle"
    assert main(["demos", "--task", "cube-single-task1", "--quality", "medium", "--out", str(out)]) == 2
    assert "--quality medium does not apply to cube-single-task1" in capsys.readouterr().err
    assert main(["demos", "--task", "Hopper-v5", "--quality", "play", "--out", str(out)]) == 2
    assert main(["demos", "--task", "cube-single-task1", "--episode-steps", "50", "--out", str(out)]) == 2
    assert "--episode-steps sets the length of play episodes" in capsys.readouterr().err


def test_swfp_tasks_lists_the_cube_tasks_and_what_they_need(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "cube-double-task5" in out and "cube-single-singletask-task1-v0" in out and "[manipulation]" in out


def test_a_mismatched_or_malformed_manipulation_dataset_is_a_clear_error(solved, tmp_path, capsys):
    from swfp.assets import ASSETS
    from swfp.data import DatasetError

    with pytest.raises(DatasetError, match="cube-single-task2"):  # Hopper's 11-D states are not the cube's 28-D
        load_dataset(ASSETS / "data" / "hopper-v5-medium.npz", "cube-single-task2")
    assert main(["pretrain", "--task", "cube-single-task2", "--dataset", str(ASSETS / "data" / "hopper-v5-medium.npz"),
                 "--steps", "1", "--out", str(tmp_path / "bc")]) == 2
    assert "cube-single-task2" in capsys.readouterr().err
    broken = solved.actions.copy()
    broken[3, 0] = 1.5  # outside the arm's action box
    (tmp_path / "broken.npz").write_bytes(b"")
    np.savez(tmp_path / "broken.npz", observations=solved.observations, actions=broken, rewards=solved.rewards,
             next_observations=solved.next_observations, terminals=solved.terminals, timeouts=solved.timeouts)
    with pytest.raises(DatasetError, match="action"):
        load_dataset(tmp_path / "broken.npz", "cube-single-task2")
