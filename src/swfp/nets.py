"""Small network building blocks shared by every model in the package.

Everything here is a plain MLP variant; the interesting structure (flows, critics, blocks)
lives in the modules that use them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Mish(nn.Module):
    """``x·tanh(softplus(x))`` written out in primitive ops.

    Same values as ``nn.Mish``, but ``torch.func.vmap`` has batching rules for every op here,
    whereas it has none for the fused ``mish_backward`` and falls back to a Python loop over the
    batch: ~3× slower per-sample Jacobians of the flow's velocity field.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


def mlp(in_dim: int, hidden_dims: tuple[int, ...], out_dim: int, layer_norm: bool = False,
        activation: type[nn.Module] = Mish) -> nn.Sequential:
    """A feed-forward MLP: ``in -> hidden_dims... -> out`` with an activation after each hidden layer.

    ``layer_norm`` adds LayerNorm before each activation, as in RLPD's critics (Ball et al., 2023),
    which keeps Q-values bounded when demonstrations and online data are mixed.
    """
    layers: list[nn.Module] = []
    prev = in_dim
    for width in hidden_dims:
        layers.append(nn.Linear(prev, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        prev = width
    layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers evaluated in one batched matmul.

    Input ``(E, B, in)`` -> output ``(E, B, out)``. Evaluating a critic ensemble this way costs one
    kernel per layer instead of ``E``, which matters on small CPUs where launch overhead dominates.
    Initialised like ``nn.Linear`` (uniform in ``±1/sqrt(in)``).
    """

    def __init__(self, ensemble_size: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, members: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """``members`` evaluates only those members' layers (``x`` then has their count as its first size)."""
        return torch.baddbmm(self.bias[members], x, self.weight[members])


def ensemble_mlp(ensemble_size: int, in_dim: int, hidden_dims: tuple[int, ...], out_dim: int,
                 layer_norm: bool = False, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """An ensemble of identical-shape MLPs; input ``(E, B, in)`` or ``(B, in)`` broadcast to all."""
    layers: list[nn.Module] = []
    prev = in_dim
    for width in hidden_dims:
        layers.append(EnsembleLinear(ensemble_size, prev, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        prev = width
    layers.append(EnsembleLinear(ensemble_size, prev, out_dim))
    return nn.Sequential(*layers)


class SinusoidalTimeEmbedding(nn.Module):
    """Fourier features of a scalar time ``t ∈ [0, 1]``: ``[sin(2π f_i t), cos(2π f_i t)]``.

    Frequencies are geometric in ``[1, max_freq]`` so the velocity field can resolve both slow and
    fast changes along the flow (as the positional embeddings of diffusion policies).
    """

    def __init__(self, dim: int, max_freq: float = 100.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * t.unsqueeze(-1) * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
