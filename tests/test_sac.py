"""SAC, the expert trainer and the medium-snapshot choice."""

import numpy as np
import torch

from swfp.algorithms.sac import SAC, SACConfig
from swfp.evaluate import evaluate
from swfp.expert import ExpertConfig, load_expert, select_medium, train_expert


def test_sac_learns_inverted_pendulum(tmp_path):
    """3k steps of SAC must clearly beat a uniform-random policy (random balances for ~5–10 steps;
    SAC reaches ~85–100 in this budget on two seeds we tried; 1000 is the maximum)."""
    rng = np.random.default_rng(0)
    random_return = evaluate(lambda o: rng.uniform(-1, 1, (len(o), 1)), "InvertedPendulum-v5", 10, seed=0)
    info = train_expert(ExpertConfig(task="InvertedPendulum-v5", env_steps=3000, learning_starts=500,
                                     eval_every=1500, eval_episodes=5, sac=SACConfig(hidden_dims=(64, 64))),
                        tmp_path)
    actor, loaded = load_expert(tmp_path, "expert")
    trained = evaluate(lambda o: actor.act(o, deterministic=True), "InvertedPendulum-v5", 10, seed=0)
    assert random_return.returns.mean() < 15
    assert trained.returns.mean() > max(50.0, 4 * random_return.returns.mean())
    assert loaded["expert"]["eval_return"] == info["expert"]["eval_return"]
    for name in ("expert.safetensors", "medium.safetensors", "config.json", "meta.json", "eval.csv",
                 "learning_curve.png"):
        assert (tmp_path / name).is_file(), name


def test_sac_log_prob_matches_squashed_gaussian():
    """The tanh change of variables: log π(a) = log N(u) − Σ log(1 − tanh(u)²)."""
    torch.manual_seed(0)
    agent = SAC(4, 2, SACConfig(hidden_dims=(16,)))
    obs = torch.randn(5, 4)
    torch.manual_seed(1)
    action, log_prob = agent.actor.sample(obs)
    mean, log_std = agent.actor(obs)
    u = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1) - torch.log1p(-action ** 2 + 1e-6).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=2e-3, rtol=1e-4)


def test_medium_snapshot_is_in_the_d4rl_band():
    snaps = [{"step": s, "return_mean": r} for s, r in [(1, 100.0), (2, 900.0), (3, 1300.0), (4, 2000.0), (5, 3000.0)]]
    assert select_medium(snaps)["step"] == 3  # 1300 is in [1000, 1500] and nearest 0.4 × 3000
    outside = [{"step": 1, "return_mean": 10.0}, {"step": 2, "return_mean": 2900.0}, {"step": 3, "return_mean": 3000.0}]
    assert select_medium(outside)["step"] == 1  # nothing in the band: the nearest to 1200
