"""Q-function ensembles with Polyak-averaged targets, shared by SAC and the fine-tuning methods."""

from __future__ import annotations

import torch
from torch import nn

from swfp.nets import ensemble_mlp


class QEnsemble(nn.Module):
    """``E`` independent Q-networks ``Q_i(s, a)`` evaluated in one batched pass.

    ``forward`` returns ``(E, B)``. Clipped double Q (Fujimoto et al., 2018) takes the minimum
    over the ensemble for targets; ``E = 2`` is the TD3/SAC default, larger ensembles with a
    random subset min are REDQ/RLPD's choice.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: tuple[int, ...] = (256, 256),
                 ensemble_size: int = 2, layer_norm: bool = False):
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        self.ensemble_size = ensemble_size
        self.net = ensemble_mlp(ensemble_size, obs_dim + act_dim, hidden_dims, 1, layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1)
        x = x.unsqueeze(0).expand(self.ensemble_size, *x.shape)
        return self.net(x).squeeze(-1)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """``θ̄ ← (1 − rate)·θ̄ + rate·θ``."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, rate)
