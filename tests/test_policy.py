"""The user-facing policy: env units, exact densities, checkpoints that refuse to load wrongly."""

import json

import numpy as np
import pytest
import torch

from swfp.flow import FlowConfig, FlowPolicy
from swfp.loader import load
from swfp.policy import Policy
from swfp.pretrain import chunk_targets, lr_factor
from swfp.runio import CheckpointError


def make_policy(chunk=1, low=(-0.5, -2.0), high=(1.5, 2.0)) -> Policy:
    torch.manual_seed(0)
    flow = FlowPolicy(3, 2 * chunk, FlowConfig(hidden_dims=(32, 32), num_steps=6))
    return Policy(flow, "toy", np.array([0.1, -0.2, 0.3]), np.array([1.0, 2.0, 0.5]), np.array(low),
                  np.array(high), action_chunk=chunk)


def test_predict_shapes_and_bounds():
    policy = make_policy()
    obs = np.random.default_rng(0).normal(size=(5, 3))
    actions = policy.predict(obs)
    assert actions.shape == (5, 2)
    assert np.all(actions >= policy.action_low) and np.all(actions <= policy.action_high)
    assert policy.predict(obs[0]).shape == (2,)
    np.testing.assert_array_equal(policy.predict(obs, deterministic=True), policy.predict(obs, deterministic=True))
    assert make_policy(chunk=4).predict(obs).shape == (5, 4, 2)
    with pytest.raises(ValueError, match="observations have size 4"):
        policy.predict(np.zeros((2, 4)))


def test_env_unit_log_prob_is_the_normalised_density_with_the_jacobian():
    """log π_env(a) = log π(a_n) − Σ log((high − low)/2): here scales (1, 2), so the shift is −log 2."""
    policy = make_policy()
    obs = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
    with torch.no_grad():
        a_norm, logp_norm = policy.cascade.sample(policy.normalize_obs(obs), with_log_prob=True)
    a_env = policy.action_low + (a_norm.numpy() + 1) * 0.5 * (policy.action_high - policy.action_low)
    np.testing.assert_allclose(policy.log_prob(obs, a_env), logp_norm.numpy() - np.log(2.0), atol=1e-4)


def test_save_load_roundtrip_is_exact(tmp_path):
    policy = make_policy(chunk=2)
    policy.save(tmp_path)
    loaded = load(tmp_path)
    obs = np.random.default_rng(2).normal(size=(4, 3))
    torch.manual_seed(5)
    a = policy.predict(obs)
    torch.manual_seed(5)
    np.testing.assert_array_equal(loaded.predict(obs), a)
    assert load(tmp_path / "policy.safetensors").action_chunk == 2


def test_bad_checkpoints_say_what_is_wrong(tmp_path):
    with pytest.raises(CheckpointError, match="no swfp policy"):
        load(tmp_path)
    make_policy().save(tmp_path)
    spec = json.loads((tmp_path / "policy.json").read_text())
    (tmp_path / "policy.json").write_text(json.dumps({**spec, "flow": {**spec["flow"], "hidden_dims": [64, 64]}}))
    with pytest.raises(CheckpointError, match="does not match"):
        load(tmp_path)
    (tmp_path / "policy.json").write_text(json.dumps(spec))
    raw = (tmp_path / "policy.safetensors").read_bytes()
    (tmp_path / "policy.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load(tmp_path)


def test_chunk_targets_pad_within_episodes():
    actions = np.arange(6, dtype=np.float32)[:, None]  # episodes [0, 1, 2] and [3, 4, 5]
    targets = chunk_targets(actions, np.array([2, 5]), horizon=3)
    np.testing.assert_array_equal(targets, [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 5], [4, 5, 5], [5, 5, 5]])


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.1)


def test_policy_with_blocks_roundtrips_and_keeps_an_exact_density(tmp_path):
    """A fine-tuned policy (base + JKO blocks, τ and sub-steps per block) saves and loads exactly."""
    from swfp.blocks import BlockConfig, JKOBlock
    from swfp.cascade import Cascade

    policy = make_policy()
    base = policy.cascade.base
    blocks = []
    for i, sub_steps in enumerate((1, 2)):
        block = JKOBlock(3, 2, BlockConfig(hidden_dims=(16,), sub_steps=sub_steps, tau=0.05 * (i + 1)))
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.3 * torch.randn_like(p))  # a non-identity block
        blocks.append(block)
    tuned = Policy(Cascade(base, blocks), "toy", policy.obs_mean.numpy(), policy.obs_std.numpy(),
                   policy.action_low, policy.action_high)
    tuned.save(tmp_path)
    loaded = load(tmp_path)
    assert loaded.cascade.num_blocks == 2
    assert [b.sub_steps for b in loaded.cascade.blocks] == [1, 2]
    assert [b.tau.item() for b in loaded.cascade.blocks] == pytest.approx([0.05, 0.1])
    obs = np.random.default_rng(3).normal(size=(16, 3)).astype(np.float32)
    torch.manual_seed(7)
    a = tuned.predict(obs)
    torch.manual_seed(7)
    np.testing.assert_array_equal(loaded.predict(obs), a)
    assert not np.allclose(a, policy.predict(obs, deterministic=True))
    with torch.no_grad():
        a_norm, logp = loaded.cascade.sample(loaded.normalize_obs(obs), with_log_prob=True)
    a_env = loaded.action_low + (a_norm.numpy() + 1) * 0.5 * (loaded.action_high - loaded.action_low)
    np.testing.assert_allclose(loaded.log_prob(obs, a_env), logp.numpy() - np.log(2.0), atol=1e-4)
