"""Demonstrations from a real (tiny) SAC expert: valid, reproducible, stochastic, in env units."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from swfp.algorithms.network_policy import NetworkPolicy
from swfp.algorithms.sac import GaussianActor
from swfp.data import DatasetError, action_bounds, load_dataset, normalize_actions
from swfp.demos import generate_demos
from swfp.expert import ExpertConfig, expert_run_config, load_expert, train_expert
from swfp.expert_choice import ChoiceConfig
from swfp.runio import CheckpointError, atomic_write_json

TASK = "Hopper-v5"


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("expert")
    choice = ChoiceConfig(shortlist=2, expert_episodes=1, medium_episodes=1, fresh_episodes=1)
    train_expert(ExpertConfig(learning_starts=300, choice=choice), expert_run_config(TASK, 600, eval_every=200,
                                                                                      eval_episodes=1), out)
    return out


@pytest.fixture(scope="module")
def demos(expert_dir):
    return generate_demos(TASK, expert_dir, "expert", episodes=3, seed=0)


def test_demos_are_a_valid_dataset_for_the_task(demos, expert_dir):
    assert demos.validate(TASK) is demos
    assert (demos.obs_dim, demos.act_dim) == (11, 3)
    assert demos.observations.dtype == demos.actions.dtype == np.float32
    low, high = action_bounds(TASK)
    assert np.all(demos.actions >= low) and np.all(demos.actions <= high)
    meta = demos.metadata
    assert meta["task"] == TASK and meta["source"] == "swfp-expert" and meta["quality"] == "expert"
    assert meta["seed"] == 0 and meta["expert_dir"] == str(expert_dir)
    _, info = load_expert(expert_dir, "expert")
    assert meta["policy_step"] == info["expert"]["step"]
    assert meta["policy_return"] == info["expert"]["evaluation"]["return_mean"]
    assert len(meta["episode_returns"]) == 3
    np.testing.assert_allclose(demos.episode_returns(), meta["episode_returns"], rtol=1e-5)


def test_episodes_are_contiguous_with_flags_only_at_their_ends(demos):
    ends = demos.terminals | demos.timeouts
    assert ends.sum() == 3 and ends[-1]
    inside = ~ends[:-1]
    # Within an episode each transition starts where the previous one ended...
    np.testing.assert_array_equal(demos.next_observations[:-1][inside], demos.observations[1:][inside])
    # ...and a new episode starts from a reset state, not from the previous episode's last state.
    after_end = np.flatnonzero(ends[:-1])
    assert not np.any(np.all(demos.next_observations[after_end] == demos.observations[after_end + 1], axis=1))
    starts = demos.observations[np.concatenate([[0], after_end + 1])]
    assert len(np.unique(starts, axis=0)) == 3  # episode i is reset with seed + i
    # The tiny expert falls over long before the 1000-step limit: every episode terminated.
    assert demos.terminals.sum() == 3 and not demos.timeouts.any()


def test_same_seed_is_bit_identical_and_another_seed_differs(demos, expert_dir):
    torch.manual_seed(123)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(123)
    again = generate_demos(TASK, expert_dir, "expert", episodes=3, seed=0)
    np.testing.assert_array_equal(torch.rand(3), expected_next_draw)  # caller's torch RNG untouched
    for name in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(again, name), getattr(demos, name), err_msg=name)
    other = generate_demos(TASK, expert_dir, "expert", episodes=3, seed=1)
    assert len(other) != len(demos) or not np.array_equal(other.actions, demos.actions)
    assert not np.array_equal(other.observations[0], demos.observations[0])  # reset with seed + i


def test_actions_are_stochastic_samples_of_the_expert(demos, expert_dir):
    policy, _ = load_expert(expert_dir, "expert")
    low, high = action_bounds(TASK)
    mean_actions = policy.normalized_actions(demos.observations, deterministic=True)
    sampled = normalize_actions(demos.actions, low, high)
    assert not np.allclose(sampled, mean_actions, atol=1e-3)
    assert np.all(np.abs(sampled) <= 1 + 1e-6)


def test_medium_quality_loads(expert_dir):
    medium = generate_demos(TASK, expert_dir, "medium", episodes=2, seed=0)
    _, info = load_expert(expert_dir, "medium")
    assert medium.metadata["quality"] == "medium"
    assert medium.metadata["policy_return"] == info["medium"]["evaluation"]["return_mean"]
    assert len(medium.metadata["episode_returns"]) == 2
    with pytest.raises(ValueError, match="unknown quality 'random'"):
        generate_demos(TASK, expert_dir, "random", episodes=1, seed=0)


def test_demos_round_trip_through_a_file(demos, tmp_path):
    loaded = load_dataset(demos.save(tmp_path / "hopper-expert.npz"))
    np.testing.assert_array_equal(loaded.actions, demos.actions)
    assert loaded.metadata == demos.metadata


def test_expert_for_another_task_is_refused(expert_dir):
    with pytest.raises(CheckpointError, match=r"trained on 'Hopper-v5'.*not on 'Walker2d-v5'"):
        generate_demos("Walker2d-v5", expert_dir, "expert", episodes=1, seed=0)


def test_demos_of_the_wrong_task_fail_validation(demos):
    with pytest.raises(DatasetError, match="observations have 11 dimensions but task 'Walker2d-v5' has 17"):
        demos.validate("Walker2d-v5")


def test_actions_are_stored_in_env_units_and_truncation_is_a_timeout(tmp_path):
    """Pendulum's box is [-2, 2] and its episodes end only by the 200-step time limit. The expert
    directory is written by hand from an untrained actor (its weights do not matter here)."""
    torch.manual_seed(0)
    low, high = action_bounds("Pendulum-v1")
    policy = NetworkPolicy(GaussianActor(3, 1, (16,)), "expert", "Pendulum-v1", np.zeros(3), np.ones(3), low, high)
    for quality in ("expert", "medium"):
        policy.save(tmp_path / quality)
    evaluation = {"evaluation": {"return_mean": -1.0}}
    atomic_write_json(tmp_path / "expert.json", {"task": "Pendulum-v1", "expert": {"step": 2, **evaluation},
                                                 "medium": {"step": 1, **evaluation}})
    d = generate_demos("Pendulum-v1", tmp_path, "expert", episodes=2, seed=0)
    assert len(d) == 400 and not d.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(d.timeouts), [199, 399])
    assert np.all(np.abs(d.actions) <= 2.0) and np.abs(d.actions).max() > 1.2


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch is built without MKL here")
def test_swfp_demos_makes_the_same_data_whatever_the_cpus_instruction_set(tmp_path):
    """Two machines, simulated by holding MKL to SSE4.2 on one and AVX2 on the other: the shipped Walker2d
    expert's medium data agree bit for bit. (Without MKL_CBWR they differ: the kernels round differently and
    the walker's falls amplify it.)"""
    fingerprints = set()
    for instructions in ("SSE4_2", "AVX2"):
        env = {**os.environ, "MKL_ENABLE_INSTRUCTIONS": instructions}
        env.pop("MKL_CBWR", None)
        out = tmp_path / f"{instructions}.npz"
        subprocess.run([sys.executable, "-m", "swfp.cli", "demos", "--task", "Walker2d-v5", "--quality", "medium",
                        "--episodes", "10", "--seed", "0", "--out", str(out)], env=env, check=True,
                       capture_output=True, timeout=300)
        fingerprints.add(load_dataset(out).fingerprint())
    assert len(fingerprints) == 1
