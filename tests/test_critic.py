"""The shared critic sees actions as the environment executes them: clipped to the box."""

import torch

from swfp.critic import QEnsemble


def test_critic_values_actions_as_clipped_to_the_box_with_no_gradient_outside():
    torch.manual_seed(0)
    q = QEnsemble(obs_dim=3, act_dim=2, hidden_dims=(32, 32), ensemble_size=2)
    obs = torch.randn(64, 3)
    actions = 2.5 * torch.randn(64, 2)  # many components outside [-1, 1], as a flow's samples can be
    assert (actions.abs() > 1).any() and (actions.abs() < 1).any()
    torch.testing.assert_close(q(obs, actions), q(obs, actions.clamp(-1, 1)), rtol=0, atol=0)

    actions.requires_grad_(True)
    grad = torch.autograd.grad(q(obs, actions).sum(), actions)[0]
    outside = actions.detach().abs() > 1
    assert (grad[outside] == 0).all()  # no push further out of the box
    assert (grad[~outside] != 0).all()  # inside, the critic's action-gradient is intact
