"""SAC's tanh-squashed Gaussian actor (the expert trainer is tests/test_expert.py)."""

import torch

from swfp.algorithms.sac import SAC, SACConfig


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
