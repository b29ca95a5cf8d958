"""Replay: ring semantics, checkpoint round trip, and the demonstration/online mixture."""

import numpy as np
import pytest

from swfp.buffer import MixedReplay, ReplayBuffer


def filled(n, value, capacity=None):
    buf = ReplayBuffer(2, 1, capacity or n)
    buf.add(np.full((n, 2), value), np.full((n, 1), value), np.full(n, value), np.full((n, 2), value), np.zeros(n))
    return buf


def test_ring_overwrites_oldest_and_roundtrips():
    buf = ReplayBuffer(2, 1, capacity=3)
    for v in range(5):
        buf.add(np.full((1, 2), v), np.full((1, 1), v), np.full(1, v), np.full((1, 2), v), np.zeros(1))
    assert len(buf) == 3 and sorted(buf.rewards.tolist()) == [2, 3, 4]
    copy = ReplayBuffer(2, 1, capacity=3)
    copy.load_state_dict(buf.state_dict())
    assert copy.position == buf.position and np.array_equal(copy.rewards, buf.rewards)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, 1, capacity=2).load_state_dict(buf.state_dict())


@pytest.mark.parametrize("num_envs, capacity", [(1, 1000), (3, 1000), (1, 250), (3, 250)])
def test_checkpoint_stores_each_state_once_and_restores_exactly(num_envs, capacity):
    """Episodes of random length on ``num_envs`` parallel envs, with and without the ring wrapping:
    the round trip is exact, and ``s'`` is stored only at episode ends and the ring's seam."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(4, 2, capacity)
    obs = rng.normal(size=(num_envs, 4))
    for _ in range(400 // num_envs):
        next_obs = rng.normal(size=(num_envs, 4))
        done = rng.random(num_envs) < 0.05
        buf.add(obs, rng.normal(size=(num_envs, 2)), rng.normal(size=num_envs), next_obs, done)
        obs = np.where(done[:, None], rng.normal(size=(num_envs, 4)), next_obs)  # a reset starts a new episode
    state = buf.state_dict()
    copy = ReplayBuffer(4, 2, capacity)
    copy.load_state_dict(state)
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        assert np.array_equal(getattr(copy, key)[:len(buf)], getattr(buf, key)[:len(buf)]), key
    assert (copy.position, copy.size, copy.stride) == (buf.position, buf.size, buf.stride)
    assert len(state["next_observations"]) < 0.15 * len(buf)


def test_mixture_ratio_and_offline_only_start():
    rng = np.random.default_rng(0)
    offline, online = filled(100, 1.0), ReplayBuffer(2, 1, 100)
    mixed = MixedReplay(offline, online, offline_fraction=0.25)
    assert mixed.sample(64, rng).rewards.eq(1.0).all()  # no online data yet: all demonstrations
    online.add(*(a for a in (np.zeros((10, 2)), np.zeros((10, 1)), np.zeros(10), np.zeros((10, 2)), np.zeros(10))))
    batch = mixed.sample(64, rng)
    assert len(batch.rewards) == 64 and int(batch.rewards.eq(1.0).sum()) == 16
    with pytest.raises(ValueError, match="offline_fraction"):
        MixedReplay(offline, online, 1.5)
