"""Replay: transitions ``(s, a, r, s', terminal, steps)`` in a fixed-size numpy ring, and the mixture of
demonstrations and online data that fine-tuning samples from.

``steps`` is how many environment steps the transition spans: 1, or up to H for an action chunk
(:mod:`swfp.chunks`), whose ``r`` is then the chunk's discounted reward and whose backup is discounted
by ``γ^steps``.

``terminal`` is the environment's ``terminated`` flag only: a time-limit truncation keeps
bootstrapping (Pardo et al., 2018, "Time Limits in Reinforcement Learning"). Actions are stored
in the policy's normalised box ``[-1, 1]``; observations raw (each learner normalises them).

Replay lives on the host, whatever the run's device: a sampled :class:`Batch` is moved to the device
once per update (:meth:`Batch.to`). Keeping it there costs one copy of a few hundred rows per update
(timed as the loop's ``transfer`` phase), and keeps a million-transition buffer and its checkpoint off
the accelerator's memory; environments write to it from the host on every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from swfp.devices import to_device


@dataclass
class Batch:
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    steps: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device`` (the same tensors when they are there already): one copy per field."""
        return Batch(*(to_device(getattr(self, f), device) for f in Batch.__dataclass_fields__))

    @staticmethod
    def concat(parts: list["Batch"]) -> "Batch":
        return Batch(*(torch.cat([getattr(p, f) for p in parts]) for f in Batch.__dataclass_fields__))


class ReplayBuffer:
    """Ring buffer; ``add`` takes a batch of transitions (one per vector sub-environment)."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.observations = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), np.float32)
        self.terminals = np.zeros(capacity, np.float32)
        self.steps = np.ones(capacity, np.float32)
        self.position = 0
        self.size = 0
        self.stride = 1  # transitions per add (the vector env's width): row i's s' is row i + stride's s

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, terminals, steps=1) -> None:
        n = self.stride = len(obs)
        idx = (self.position + np.arange(n)) % self.capacity
        self.observations[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_observations[idx] = next_obs
        self.terminals[idx] = terminals
        self.steps[idx] = steps
        self.position = int((self.position + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        return self._rows(idx)

    def _rows(self, idx: np.ndarray) -> Batch:
        return Batch(*(torch.from_numpy(a[idx]) for a in (
            self.observations, self.actions, self.rewards, self.next_observations, self.terminals, self.steps)))

    def recent(self, n: int) -> Batch:
        """The last ``min(n, size)`` transitions added, oldest first."""
        if self.size == 0:
            raise RuntimeError("the replay buffer is empty")
        idx = (self.position - 1 - np.arange(min(n, self.size))[::-1]) % self.capacity
        return self._rows(idx)

    @classmethod
    def from_transitions(cls, observations, actions, rewards, next_observations, terminals, steps=1) -> "ReplayBuffer":
        """A buffer filled exactly with the given transitions (e.g. a demonstration dataset)."""
        buffer = cls(observations.shape[1], actions.shape[1], capacity=max(len(rewards), 1))
        buffer.add(observations, actions, rewards, next_observations, terminals, steps)
        return buffer

    def continues(self) -> np.ndarray:
        """``(size,)`` bools: whether row ``i``'s ``s'`` is the ``s`` of row ``i + stride``, i.e. its
        sub-environment's episode goes on in the next row it wrote. False where an episode ended (terminated
        or truncated: the next row starts from a reset state), at the ring's seam and on the last ``stride``
        rows. Collection writes every state twice, as ``s'`` of one row and ``s`` of the next."""
        n, k = self.size, self.stride
        out = np.zeros(n, bool)
        out[:max(n - k, 0)] = np.all(self.next_observations[:max(n - k, 0)] == self.observations[k:n], axis=1)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays for checkpointing: the filled part, with each ``s'`` stored only where it is not the
        ``s`` of the row ``stride`` later (:meth:`continues`). This nearly halves the largest part of a
        checkpoint (a grid carries unfinished trials' checkpoints between sessions) and is exact."""
        n = self.size
        rows = np.flatnonzero(~self.continues())
        return {"observations": self.observations[:n], "actions": self.actions[:n], "rewards": self.rewards[:n],
                "next_observation_rows": rows, "next_observations": self.next_observations[rows],
                "terminals": self.terminals[:n], "steps": self.steps[:n], "position": np.array(self.position),
                "stride": np.array(self.stride)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        n, k = len(state["rewards"]), int(state["stride"])
        if n > self.capacity:
            raise ValueError(f"checkpointed buffer holds {n} transitions, more than capacity {self.capacity}")
        for key in ("observations", "actions", "rewards", "terminals"):
            getattr(self, key)[:n] = state[key]
        self.steps[:n] = state.get("steps", 1)  # checkpoints from before chunks held one-step rows only
        self.next_observations[:max(n - k, 0)] = self.observations[k:n]
        self.next_observations[state["next_observation_rows"]] = state["next_observations"]
        self.size, self.stride = n, k
        self.position = int(state["position"]) % self.capacity


class MixedReplay:
    """Symmetric sampling (RLPD, Ball et al., 2023): each batch takes ``offline_fraction`` of its rows
    from the demonstrations and the rest from online data (all offline until online data exists).

    Keeping demonstrations in every batch anchors the critic on the data the policy was cloned
    from, which is what prevents the early collapse of naive offline-to-online fine-tuning.
    """

    def __init__(self, offline: ReplayBuffer, online: ReplayBuffer, offline_fraction: float = 0.5):
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
        self.offline, self.online, self.offline_fraction = offline, online, offline_fraction

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        if len(self.online) == 0:
            return self.offline.sample(batch_size, rng)
        n_offline = int(round(batch_size * self.offline_fraction)) if len(self.offline) else 0
        parts = [b.sample(n, rng) for b, n in ((self.offline, n_offline), (self.online, batch_size - n_offline)) if n]
        return Batch.concat(parts)
