"""Action chunks in fine-tuning: H actions chosen at once, executed open-loop, learned as one transition.

Q-chunking (Li, Zhou & Levine, 2025, arXiv 2507.07969) runs RL in the MDP whose action is a chunk
``a_{t:t+H}`` of H environment actions: the critic scores ``Q(s_t, a_{t:t+H})`` and backs it up over the
whole chunk,

    y = Σ_{i<k} γ^i r_{t+i} + γ^k (1 − terminal) · V(s_{t+k}),

with ``k = H`` unless the episode ended inside the chunk (then ``k`` is the number of actions executed and
the rest of the chunk is dropped). The backup is unbiased for the chunked policy, which acts open-loop,
and it propagates a sparse reward H times faster than one-step TD. A chunk is stored flat, ``(H·d,)``,
the action size of the flow that samples it; replay keeps each row's ``k`` (:class:`swfp.buffer.ReplayBuffer`'s
``steps``) and the critic discounts by ``γ^k``.

Demonstrations become chunk transitions the same way (:func:`chunk_transitions`): from every row, the
next H actions of its episode, cut at the episode's end. Where fewer than H remain, the chunk is padded
with its last action, as the policy's own chunks are when an episode ends inside them (padding is never
executed, so it carries no reward).
"""

from __future__ import annotations

import numpy as np

from swfp.envs import step_vector_env


def discounted_returns(rewards: np.ndarray, steps: np.ndarray, gamma: float) -> np.ndarray:
    """``Σ_{i<k} γ^i r_i`` per row of ``rewards (n, H)``, ``k = steps``; rewards past ``k`` must be 0."""
    rewards = np.asarray(rewards, np.float64)
    executed = np.arange(rewards.shape[1]) < np.asarray(steps)[:, None]
    if np.any(rewards[~executed] != 0):
        raise ValueError("a chunk has rewards after its last executed action")
    return (rewards * gamma ** np.arange(rewards.shape[1])).sum(1).astype(np.float32)


def execute_chunk(venv, chunks: np.ndarray, horizon: int):
    """Execute the flat chunks ``(1, H·d)`` open-loop in the one-environment vector env ``venv``.

    Returns ``(next_obs, rewards (1, H), terminated, truncated, real_next_obs, steps)``: the chunk stops
    early where the episode ends (``steps`` < H), and then ``next_obs`` is the next episode's first
    observation and ``real_next_obs`` the ended episode's last, as :func:`swfp.envs.step_vector_env`.
    """
    if venv.num_envs != 1:
        raise ValueError(f"action chunks are executed in one environment, got {venv.num_envs}: use --num-envs 1")
    actions = np.asarray(chunks, np.float32).reshape(1, horizon, -1)
    rewards = np.zeros((1, horizon), np.float32)
    for h in range(horizon):
        next_obs, reward, terminated, truncated, real_next, _ = step_vector_env(venv, actions[:, h])
        rewards[:, h] = reward
        if terminated[0] or truncated[0]:
            break
    return next_obs, rewards, terminated, truncated, real_next, np.array([h + 1])


def chunk_transitions(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                      next_observations: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray,
                      horizon: int, gamma: float) -> dict[str, np.ndarray]:
    """One chunk transition per row of a dataset (actions already in ``[-1, 1]``): ``actions`` the row's next
    ``horizon`` actions flattened, ``rewards`` their discounted sum, ``next_observations`` the state after
    the last executed one, ``terminals`` whether the episode terminated there, ``steps`` how many executed.

    Episodes end at ``terminals | timeouts`` (and at the last row); a chunk never crosses an end.
    """
    n = len(actions)
    ends = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool))
    ends = np.concatenate([ends, [n - 1]]) if not len(ends) or ends[-1] != n - 1 else ends
    end_of_row = ends[np.searchsorted(ends, np.arange(n))]  # the last row of each row's episode
    offsets = np.arange(horizon)
    rows = np.minimum(np.arange(n)[:, None] + offsets, end_of_row[:, None])  # (n, H), padded with the last row
    steps = np.minimum(horizon, end_of_row - np.arange(n) + 1)
    executed = offsets < steps[:, None]
    last = np.arange(n) + steps - 1
    return {"observations": observations,
            "actions": actions[rows].reshape(n, -1),
            "rewards": discounted_returns(np.where(executed, rewards[rows], 0.0), steps, gamma),
            "next_observations": next_observations[last],
            "terminals": np.asarray(terminals, np.float32)[last],
            "steps": steps.astype(np.float32)}
