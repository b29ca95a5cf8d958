"""Datasets: round-trips through every format, and one clear error per kind of malformed input."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from swfp.data import (FIELDS, Dataset, DatasetError, action_bounds, denormalize_actions, load_dataset,
                       normalize_actions, read_npz)
from swfp.envs import TaskError

TASK, OBS, ACT = "Hopper-v5", 11, 3
# (length, terminated) per episode; an episode that did not terminate was truncated.
EPISODES = [(5, True), (7, False), (4, True), (6, False)]


@pytest.fixture(scope="module")
def episodes() -> list[dict]:
    """Short synthetic Hopper-shaped episodes: T+1 observations, T in-bounds actions."""
    rng = np.random.default_rng(0)
    out = []
    for length, terminated in EPISODES:
        out.append({"obs": rng.normal(size=(length + 1, OBS)).astype(np.float32),
                    "actions": rng.uniform(-1, 1, size=(length, ACT)).astype(np.float32),
                    "rewards": rng.normal(size=length).astype(np.float32),
                    "terminated": terminated})
    return out


def _flags(ep, kind):
    flags = np.zeros(len(ep["actions"]), bool)
    flags[-1] = ep["terminated"] if kind == "terminals" else not ep["terminated"]
    return flags


@pytest.fixture(scope="module")
def reference(episodes) -> Dataset:
    cat = np.concatenate
    return Dataset(observations=cat([ep["obs"][:-1] for ep in episodes]),
                   actions=cat([ep["actions"] for ep in episodes]),
                   rewards=cat([ep["rewards"] for ep in episodes]),
                   next_observations=cat([ep["obs"][1:] for ep in episodes]),
                   terminals=cat([_flags(ep, "terminals") for ep in episodes]),
                   timeouts=cat([_flags(ep, "timeouts") for ep in episodes]),
                   metadata={"task": TASK, "source": "test", "quality": None, "episode_returns": [1.5, -2.0],
                             "nested": {"a": [1, 2]}})


def assert_same_fields(a: Dataset, b: Dataset):
    for name in FIELDS:
        got, want = getattr(a, name), getattr(b, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


# --- our npz -------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path, reference):
    path = reference.save(tmp_path / "d.npz")
    loaded = load_dataset(path)
    assert_same_fields(loaded, reference)
    assert loaded.metadata == reference.metadata
    assert len(loaded) == sum(n for n, _ in EPISODES) and (loaded.obs_dim, loaded.act_dim) == (OBS, ACT)


def test_fingerprint_names_the_transitions_not_the_file_or_metadata(tmp_path, reference):
    """The same transitions read back give the same fingerprint, whatever the metadata; one reward changed by
    one float32 ulp, or a flag flipped, gives another."""
    loaded = load_dataset(reference.save(tmp_path / "d.npz"))
    loaded.metadata = {"task": TASK, "note": "relabelled"}
    assert loaded.fingerprint() == reference.fingerprint()
    assert len(reference.fingerprint()) == 64
    nudged = loaded.rewards.copy()
    nudged[3] = np.nextafter(nudged[3], np.float32(np.inf))
    loaded.rewards = nudged
    assert loaded.fingerprint() != reference.fingerprint()
    loaded.rewards = reference.rewards
    loaded.timeouts = ~reference.timeouts
    assert loaded.fingerprint() != reference.fingerprint()


def test_save_appends_suffix_and_leaves_no_temp_file(tmp_path, reference):
    path = reference.save(tmp_path / "d")
    assert path.name == "d.npz"
    assert os.listdir(tmp_path) == ["d.npz"]


def test_save_replaces_an_existing_file_whole(tmp_path, reference):
    path = tmp_path / "d.npz"
    path.write_bytes(b"x" * 2_000_000)  # longer than the new file: a partial overwrite would leave junk
    reference.save(path)
    fresh = reference.save(tmp_path / "fresh.npz")
    assert path.stat().st_size == fresh.stat().st_size  # (bytes differ only in zip timestamps)
    assert_same_fields(load_dataset(path), reference)
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "fresh.npz"]


def test_failed_save_keeps_the_old_file(tmp_path, reference, monkeypatch):
    path = reference.save(tmp_path / "d.npz")
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        reference.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["d.npz"]


# --- other formats -------------------------------------------------------------------------------

def write_d4rl(path, d: Dataset, next_observations: bool = True):
    with h5py.File(path, "w") as f:
        for name in FIELDS:
            if name != "next_observations" or next_observations:
                f.create_dataset(name, data=getattr(d, name))
        f.create_dataset("infos/qpos", data=np.zeros((len(d), 6)))  # extra keys are ignored


def write_minari(root, episodes, task=TASK):
    (root / "data").mkdir(parents=True)
    with h5py.File(root / "data" / "main_data.hdf5", "w") as f:
        for i, ep in enumerate(episodes):
            g = f.create_group(f"episode_{i}")
            g.create_dataset("observations", data=ep["obs"].astype(np.float64))  # Minari stores float64
            g.create_dataset("actions", data=ep["actions"])
            g.create_dataset("rewards", data=ep["rewards"].astype(np.float64))
            g.create_dataset("terminations", data=_flags(ep, "terminals"))
            g.create_dataset("truncations", data=_flags(ep, "timeouts"))
    spec = json.dumps({"id": task, "entry_point": "gymnasium.envs.mujoco.hopper_v5:HopperEnv"})
    (root / "data" / "metadata.json").write_text(json.dumps({"dataset_id": "test/hopper-v0", "env_spec": spec}))


def write_robomimic(path, episodes, task=TASK):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": task, "type": 1, "env_kwargs": {}})
        for i, ep in enumerate(episodes):
            demo = data.create_group(f"demo_{i}")
            for group, rows in (("obs", ep["obs"][:-1]), ("next_obs", ep["obs"][1:])):
                demo.create_dataset(f"{group}/b_vel", data=rows[:, 5:])  # sorted order: a_pos, b_vel
                demo.create_dataset(f"{group}/a_pos", data=rows[:, :5])
                demo.create_dataset(f"{group}/image", data=np.zeros((len(rows), 8, 8, 3), np.uint8))
            demo.create_dataset("actions", data=ep["actions"])
            demo.create_dataset("rewards", data=ep["rewards"])
            dones = np.zeros(len(ep["actions"]), np.int64)
            dones[-1] = ep["terminated"]
            demo.create_dataset("dones", data=dones)


def test_d4rl_round_trip(tmp_path, reference):
    write_d4rl(tmp_path / "d.hdf5", reference)
    loaded = load_dataset(tmp_path / "d.hdf5", task_id=TASK)
    assert_same_fields(loaded, reference)
    assert loaded.metadata["source"] == "d4rl" and loaded.metadata["task"] == TASK
    np.testing.assert_allclose(loaded.metadata["episode_returns"], reference.episode_returns(), rtol=1e-6)


def test_d4rl_without_next_observations_derives_them_within_episodes(tmp_path, reference):
    write_d4rl(tmp_path / "d.h5", reference, next_observations=False)
    loaded = load_dataset(tmp_path / "d.h5", task_id=TASK)
    # Truncated episodes lose their last transition (no recorded successor); terminal ones keep it.
    keep = ~reference.timeouts
    expected_next = np.where(reference.terminals[keep, None], reference.observations[keep],
                             reference.next_observations[keep])
    np.testing.assert_array_equal(loaded.observations, reference.observations[keep])
    np.testing.assert_array_equal(loaded.actions, reference.actions[keep])
    np.testing.assert_array_equal(loaded.next_observations, expected_next)
    np.testing.assert_array_equal(loaded.terminals, reference.terminals[keep])
    # The new last step of each truncated episode is its timeout, so episodes stay separable.
    lengths = [n if term else n - 1 for n, term in EPISODES]
    ends = np.cumsum(lengths) - 1
    np.testing.assert_array_equal(np.flatnonzero(loaded.terminals | loaded.timeouts), ends)
    assert len(loaded.episode_returns()) == len(EPISODES)


def test_minari_round_trip(tmp_path, episodes, reference):
    write_minari(tmp_path / "hopper-v0", episodes)
    for path in (tmp_path / "hopper-v0", tmp_path / "hopper-v0" / "data" / "main_data.hdf5"):
        loaded = load_dataset(path)  # the task comes from metadata.json's env_spec
        assert_same_fields(loaded, reference)
        assert loaded.metadata["task"] == TASK and loaded.metadata["source"] == "minari"
        assert loaded.metadata["dataset_id"] == "test/hopper-v0"


def test_robomimic_round_trip_skips_images(tmp_path, episodes, reference):
    write_robomimic(tmp_path / "low_dim.hdf5", episodes)
    loaded = load_dataset(tmp_path / "low_dim.hdf5")
    assert_same_fields(loaded, reference)
    assert loaded.metadata["obs_keys"] == ["a_pos", "b_vel"] and loaded.metadata["task"] == TASK


def test_robomimic_obs_keys_order_and_image_key_error(tmp_path, episodes, reference):
    write_robomimic(tmp_path / "r.hdf5", episodes)
    loaded = load_dataset(tmp_path / "r.hdf5", obs_keys=["b_vel", "a_pos"])
    np.testing.assert_array_equal(loaded.observations, np.roll(reference.observations, -5, axis=1))
    with pytest.raises(DatasetError, match=r"obs/image has shape .*low-dimensional"):
        load_dataset(tmp_path / "r.hdf5", obs_keys=["a_pos", "b_vel", "image"])
    with pytest.raises(DatasetError, match=r"demo_0/obs is missing keys \['joint'\]"):
        load_dataset(tmp_path / "r.hdf5", obs_keys=["joint"])


def test_minari_and_robomimic_mark_the_end_of_an_unfinished_recording_as_timeout(tmp_path, episodes):
    cut = [{**ep, "terminated": False} for ep in episodes]
    write_robomimic(tmp_path / "r.hdf5", cut)
    with h5py.File(tmp_path / "r.hdf5", "a") as f:  # a demo whose dones say nothing at all
        f["data/demo_0/dones"][...] = 0
    loaded = load_dataset(tmp_path / "r.hdf5")
    assert not loaded.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(loaded.timeouts), np.cumsum([n for n, _ in EPISODES]) - 1)


# --- malformed inputs ----------------------------------------------------------------------------

def write_npz(path, reference, drop=(), **overrides):
    arrays = {name: getattr(reference, name) for name in FIELDS if name not in drop}
    arrays.update(overrides)
    np.savez(path, **arrays, metadata_json=np.array(json.dumps({"task": TASK})))
    return path


def test_missing_key(tmp_path, reference):
    path = write_npz(tmp_path / "d.npz", reference, drop=("rewards", "timeouts"))
    with pytest.raises(DatasetError, match=r"d\.npz: missing keys \['rewards', 'timeouts'\]"):
        load_dataset(path)


def test_missing_key_in_hdf5(tmp_path, reference):
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f.create_dataset("observations", data=reference.observations)
    with pytest.raises(DatasetError, match=r"missing keys \['actions', 'rewards', 'terminals', 'timeouts'\]"):
        load_dataset(tmp_path / "d.hdf5")


def test_mismatched_lengths(tmp_path, reference):
    path = write_npz(tmp_path / "d.npz", reference, actions=reference.actions[:-2])
    with pytest.raises(DatasetError, match=r"different lengths \(.*actions=20.*\)"):
        load_dataset(path)


def test_wrong_ndim(tmp_path, reference):
    path = write_npz(tmp_path / "d.npz", reference, rewards=reference.rewards[:, None])
    with pytest.raises(DatasetError, match=r"'rewards' has shape \(22, 1\) but must be 1-D"):
        load_dataset(path)


def test_wrong_observation_size_for_task(tmp_path, reference):
    obs = np.zeros((len(reference), 17), np.float32)
    path = write_npz(tmp_path / "d.npz", reference, observations=obs, next_observations=obs)
    with pytest.raises(DatasetError, match=r"observations have 17 dimensions but task 'Hopper-v5' has 11"):
        load_dataset(path)


def test_wrong_action_size_for_task(tmp_path, reference):
    path = write_npz(tmp_path / "d.npz", reference, actions=np.zeros((len(reference), 6), np.float32))
    with pytest.raises(DatasetError, match=r"actions have 6 dimensions but task 'Hopper-v5' has 3"):
        load_dataset(path)


def test_nan(tmp_path, reference):
    rewards = reference.rewards.copy()
    rewards[[2, 9]] = np.nan
    path = write_npz(tmp_path / "d.npz", reference, rewards=rewards)
    with pytest.raises(DatasetError, match=r"'rewards' contains NaN in 2 of 22 rows"):
        load_dataset(path)


def test_inf(tmp_path, reference):
    obs = reference.next_observations.copy()
    obs[3, [0, 4]] = np.inf
    path = write_npz(tmp_path / "d.npz", reference, next_observations=obs)
    with pytest.raises(DatasetError, match=r"'next_observations' contains inf in 1 of 22 rows"):
        load_dataset(path)


def test_actions_outside_the_box(tmp_path, reference):
    actions = reference.actions.copy()
    actions[0, 0], actions[5, 2] = 1.5, -3.0
    actions[6, 1] = 1.0 + 5e-6  # within the 1e-5 tolerance
    actions[7, 0] = 1.0 + 1e-4  # not
    path = write_npz(tmp_path / "d.npz", reference, actions=actions)
    with pytest.raises(DatasetError, match=r"'actions' has 3 of 22 rows outside .*max violation 2\)"):
        load_dataset(path)


def test_non_boolean_flags(tmp_path, reference):
    path = write_npz(tmp_path / "d.npz", reference, terminals=np.full(len(reference), 0.5))
    with pytest.raises(DatasetError, match=r"'terminals' has 22 values other than 0/1"):
        load_dataset(path)


@pytest.mark.parametrize("name", ["d.npz", "d.hdf5", "main_data.hdf5"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{name}: file is corrupt or empty"):
        load_dataset(tmp_path / name)


def test_corrupt_npz_is_not_unpickled(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DatasetError, match="corrupt or empty"):
        load_dataset(tmp_path / "d.npz")


def test_zero_transitions(tmp_path, reference):
    path = write_npz(tmp_path / "d.npz", reference, **{name: getattr(reference, name)[:0] for name in FIELDS})
    with pytest.raises(DatasetError, match=r"dataset is empty \(0 transitions\)"):
        load_dataset(path)
    write_minari(tmp_path / "m", [])
    with pytest.raises(DatasetError, match=r"0 transitions"):
        load_dataset(tmp_path / "m")


def test_unknown_extension(tmp_path):
    (tmp_path / "d.csv").write_text("1,2,3\n")
    with pytest.raises(DatasetError, match=r"unknown dataset format '.csv'; supported formats: swfp .npz"):
        load_dataset(tmp_path / "d.csv")


def test_unrecognised_hdf5_layout(tmp_path):
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f.create_dataset("states", data=np.zeros(3))
    with pytest.raises(DatasetError, match=r"HDF5 layout not recognised \(top-level keys \['states'\]\)"):
        load_dataset(tmp_path / "d.hdf5")


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match=r"no dataset at .*nope\.npz.*swfp demos"):
        load_dataset(tmp_path / "nope.npz")


def test_unknown_task_id(tmp_path, reference):
    path = reference.save(tmp_path / "d.npz")
    with pytest.raises(TaskError, match=r"unknown task 'NoSuchTask-v0'"):
        load_dataset(path, task_id="NoSuchTask-v0")


def test_read_npz_refuses_pickled_objects(tmp_path, reference):
    arrays = {name: getattr(reference, name) for name in FIELDS}
    np.savez(tmp_path / "d.npz", **arrays, metadata_json=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(DatasetError, match="pickled"):
        read_npz(tmp_path / "d.npz")


# --- small helpers -------------------------------------------------------------------------------

def make(rewards, terminals=(), timeouts=()):
    n = len(rewards)
    term, tout = np.zeros(n, bool), np.zeros(n, bool)
    term[list(terminals)], tout[list(timeouts)] = True, True
    zeros = np.zeros((n, 1), np.float32)
    return Dataset(zeros, zeros, np.asarray(rewards, np.float32), zeros, term, tout, {})


def test_episode_returns_split_at_terminals_and_timeouts():
    d = make([1, 2, 3, 4, 5, 6, 7], terminals=[1], timeouts=[3])
    np.testing.assert_array_equal(d.episode_returns(), [3, 7, 18])  # trailing partial episode counts
    d = make([1, 2, 3, 4], terminals=[1, 3], timeouts=[3])  # both flags on one step: one end
    np.testing.assert_array_equal(d.episode_returns(), [3, 7])
    np.testing.assert_array_equal(make([1, 2, 3]).episode_returns(), [6])
    np.testing.assert_array_equal(make([1, 2, 3], timeouts=[1]).episode_returns(), [3, 3])


def test_observation_stats_floors_std():
    d = make([0, 0, 0, 0])
    d.observations = np.array([[1, 5], [3, 5], [1, 5], [3, 5]], np.float32)
    mean, std = d.observation_stats(min_std=1e-2)
    np.testing.assert_allclose(mean, [2, 5])
    np.testing.assert_allclose(std, [1, 1e-2])
    assert mean.dtype == std.dtype == np.float32


def test_action_normalisation_is_affine_and_invertible():
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 10.0])
    env_units = np.array([[-2.0, 0.0], [0.0, 5.0], [2.0, 10.0], [1.0, 2.5]])
    unit = normalize_actions(env_units, low, high)
    np.testing.assert_allclose(unit, [[-1, -1], [0, 0], [1, 1], [0.5, -0.5]])
    np.testing.assert_allclose(denormalize_actions(unit, low, high), env_units, atol=1e-6)


def test_action_bounds_of_the_raw_env():
    low, high = action_bounds("Pendulum-v1")  # a task whose box is not [-1, 1]
    np.testing.assert_array_equal(low, [-2.0])
    np.testing.assert_array_equal(high, [2.0])
    assert low.dtype == np.float32
    with pytest.raises(TaskError):
        action_bounds("NoSuchTask-v0")
