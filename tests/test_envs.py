"""Tasks: normalised actions, unknown ids, user modules, time limits are not terminals."""

import sys
import textwrap

import numpy as np
import pytest

from swfp.envs import TaskError, make_env, make_vector_env, step_vector_env, task_spec


def test_actions_are_normalised_and_clipped():
    env = make_env("Hopper-v5", seed=0)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    env.step(np.full(3, 5.0, dtype=np.float32))  # clipped, not an error


def test_unknown_task_has_a_clear_error():
    with pytest.raises(TaskError, match="unknown task 'Hoper-v5'.*module:MyEnv"):
        task_spec("Hoper-v5")
    with pytest.raises(TaskError, match="unknown task"):
        make_env("no_such_module_xyz:Env-v0")


def test_discrete_action_space_is_refused():
    with pytest.raises(TaskError, match="Box action space"):
        task_spec("CartPole-v1")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "swfp_user_envs.py").write_text(textwrap.dedent('''
        import gymnasium as gym
        import numpy as np

        class Reach(gym.Env):
            """Move a point toward the origin; actions in [-2, 2]."""
            observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
            action_space = gym.spaces.Box(-2, 2, (2,), np.float32)

            def reset(self, seed=None, options=None):
                super().reset(seed=seed)
                self.x = self.np_random.uniform(-1, 1, 2).astype(np.float32)
                return self.x.copy(), {}

            def step(self, action):
                self.x = np.clip(self.x + 0.1 * action, -10, 10).astype(np.float32)
                return self.x.copy(), -float(np.sum(self.x ** 2)), False, False, {"success": bool(np.sum(self.x ** 2) < 0.01)}

        if "Reach-v0" not in gym.registry:
            gym.register("Reach-v0", entry_point=Reach, max_episode_steps=7)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "swfp_user_envs:Reach-v0"
    sys.modules.pop("swfp_user_envs", None)


def test_user_module_task_and_time_limit_is_truncation(user_module):
    spec = task_spec(user_module)
    assert spec.max_episode_steps == 7
    venv = make_vector_env(user_module, num_envs=2, seed=0)
    obs, _ = venv.reset(seed=0)
    for t in range(7):
        next_obs, reward, terminated, truncated, real_next, info = step_vector_env(venv, np.ones((2, 2)))
        if t < 6:
            assert not truncated.any() and np.array_equal(real_next, next_obs)
    assert truncated.all() and not terminated.any()
    # the autoreset observation is a fresh start; the stored next state is the true last one
    assert not np.allclose(real_next, next_obs)
    np.testing.assert_allclose(real_next, info["final_obs"].astype(np.float32) if info["final_obs"].dtype != object
                               else np.stack(info["final_obs"]))


def test_evaluation_reports_success_where_the_task_defines_it(user_module):
    from swfp.evaluate import evaluate

    toward_origin = evaluate(lambda o: -np.clip(5 * o, -1, 1), user_module, episodes=4, seed=0)
    away = evaluate(lambda o: np.clip(5 * o, -1, 1), user_module, episodes=4, seed=0)
    assert toward_origin.summary()["success_rate"] > away.summary()["success_rate"] == 0.0
    assert evaluate(lambda o: np.zeros((len(o), 3)), "Hopper-v5", 1, seed=0).summary()["success_rate"] is None
