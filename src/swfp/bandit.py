"""A one-step contextual bandit with a known optimum, for tests and sanity checks of every method.

State ``s ~ U[-1, 1]^2``; action ``a ∈ [-1, 1]^2``; reward ``r(s, a) = −‖a − μ(s)‖² / (2σ_r²)`` with
``μ(s) = s/2`` and ``σ_r = 0.5``; the episode ends after one step (a true termination, so
``Q(s, a) = r(s, a)``). The entropic optimum of DESIGN.md's functional is then known in closed
form, ``π*(·|s) ∝ exp(r/α) = N(μ(s), α·σ_r²·I)``, and the best deterministic return is 0.
:func:`misplaced_demonstrations` gives a demonstrator that is off by a fixed offset, so a
behaviour-cloned policy starts clearly below the optimum and fine-tuning has somewhere to go.
Registered as ``swfp/QuadraticBandit-v0`` when :mod:`swfp.envs` is imported.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

REWARD_STD = 0.5
DEMO_OFFSET = np.array([-0.4, 0.3], dtype=np.float32)


def optimum(obs: np.ndarray) -> np.ndarray:
    """``μ(s) = s/2``, the reward-maximising action."""
    return 0.5 * np.asarray(obs, dtype=np.float32)


class QuadraticBandit(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs.copy(), {}

    def step(self, action):
        error = float(np.sum((np.asarray(action, np.float32) - optimum(self._obs)) ** 2))
        reward = -error / (2 * REWARD_STD ** 2)
        return self._obs.copy(), reward, True, False, {"success": error < 0.01}


def misplaced_demonstrations(n: int, seed: int, noise: float = 0.1):
    """``n`` one-step transitions of a demonstrator acting ``μ(s) + offset + noise`` (a
    :class:`swfp.data.Dataset` for ``swfp/QuadraticBandit-v0``)."""
    from swfp.data import build_dataset

    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    actions = np.clip(optimum(obs) + DEMO_OFFSET + noise * rng.standard_normal((n, 2)), -1, 1).astype(np.float32)
    rewards = -np.sum((actions - optimum(obs)) ** 2, axis=1) / (2 * REWARD_STD ** 2)
    return build_dataset({"observations": obs, "actions": actions, "rewards": rewards, "next_observations": obs,
                          "terminals": np.ones(n, bool), "timeouts": np.zeros(n, bool)},
                         {"task": "swfp/QuadraticBandit-v0", "source": "swfp-bandit", "quality": "misplaced",
                          "seed": seed})
