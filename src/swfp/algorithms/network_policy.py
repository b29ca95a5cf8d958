"""The policy of a method that does not act with a flow cascade, and its saved format.

ReinFlow acts with its noisy Euler chain, DSRL with a noise actor in front of the frozen flow, FQL with
its one-step policy, SAC and RLPD with a tanh-Gaussian actor. Each of these is an :class:`Actor`: a
network that maps normalised observations to actions in ``[-1, 1]``, says how to rebuild itself
(:meth:`Actor.spec`, :meth:`Actor.from_spec`) and, where its method has an exact density, gives it.
:class:`NetworkPolicy` puts an actor behind the contract every loaded policy keeps
(:class:`swfp.policy.EnvPolicy`: ``predict`` in env units, ``log_prob`` where there is a density).

On disk, beside the run's other files (format :data:`FORMAT_VERSION`, no pickle):

* ``actor.json`` — format version, algorithm, actor kind, task, sizes, action bounds and the actor's
  own spec (its layer widths; for DSRL the frozen flow's config too);
* ``actor.safetensors`` — the actor's weights (``actor.*``; DSRL's include the frozen flow it steers,
  so the run directory alone rebuilds the policy) and ``obs_mean`` / ``obs_std``.

Loading (``swfp.load``, :mod:`swfp.loader`) looks the kind up among the methods' actor classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from swfp.devices import resolve_device, to_host
from swfp.policy import EnvPolicy, Policy, observation_statistics
from swfp.runio import (CheckpointError, atomic_write_json, load_state_strict, load_tensors, read_json,
                        require_format, save_tensors)

FORMAT_VERSION = 1
RERUN = "re-run the fine-tuning with this version of swfp (`swfp finetune PRETRAINED --algo ALGO`)"


class Actor(nn.Module):
    """A method's acting network on normalised observations and actions in ``[-1, 1]``.

    ``kind`` names it in ``actor.json``; ``no_density`` says why it has no exact log-density (``None``:
    it has one, and :meth:`log_prob` gives it).
    """

    kind: str = ""
    no_density: str | None = None

    def actions(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actions ``(B, act_dim)`` for normalised observations ``(B, obs_dim)``."""
        raise NotImplementedError

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Exact ``log π(a|s)`` ``(B,)`` of actions in ``[-1, 1]`` units."""
        raise NotImplementedError(self.no_density)

    def spec(self) -> dict:
        """What :meth:`from_spec` needs besides the sizes (JSON values)."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, obs_dim: int, act_dim: int, spec: dict) -> "Actor":
        raise NotImplementedError


class NetworkPolicy(EnvPolicy):
    """An :class:`Actor` behind the env-unit contract of every loaded policy, for the method ``algorithm``."""

    def __init__(self, actor: Actor, algorithm: str, task_id: str, obs_mean: np.ndarray | torch.Tensor,
                 obs_std: np.ndarray | torch.Tensor, action_low: np.ndarray, action_high: np.ndarray,
                 device: torch.device | str = "cpu", action_chunk: int = 1):
        """``actor`` is moved to ``device`` (it stays the same object: a learner's actor is the policy's); it acts
        in chunks of ``action_chunk`` actions, flattened."""
        super().__init__(task_id, obs_mean, obs_std, action_low, action_high, action_chunk, device)
        self.actor, self.algorithm = actor.to(self.device), algorithm

    @classmethod
    def beside(cls, actor: Actor, algorithm: str, pretrained: Policy) -> "NetworkPolicy":
        """The policy of a run that started from ``pretrained``: its observation statistics and action box (every
        method of the harness normalises observations with the pre-trained run's statistics), on its device."""
        return cls(actor, algorithm, pretrained.task_id, pretrained.obs_mean, pretrained.obs_std,
                   pretrained.action_low, pretrained.action_high, pretrained.device, pretrained.action_chunk)

    @torch.no_grad()
    def normalized_actions(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return to_host(self.actor.actions(self.normalize_obs(obs), deterministic))

    def normalized_log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.actor.no_density is not None:
            raise NotImplementedError(f"the {self.algorithm} policy has no exact log-density: {self.actor.no_density}")
        return self.actor.log_prob(obs, actions)

    def to(self, device: torch.device | str) -> "NetworkPolicy":
        super().to(device)
        self.actor.to(self.device)
        return self

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        tensors = {f"actor.{k}": v for k, v in self.actor.state_dict().items()}
        tensors.update(obs_mean=self.obs_mean, obs_std=self.obs_std)
        save_tensors(directory / "actor.safetensors", tensors)
        atomic_write_json(directory / "actor.json", {
            "format_version": FORMAT_VERSION, "algorithm": self.algorithm, "kind": self.actor.kind,
            "task": self.task_id, "obs_dim": int(self.obs_mean.shape[0]), "act_dim": self.act_dim,
            "action_chunk": self.action_chunk,
            "action_low": self.action_low.tolist(), "action_high": self.action_high.tolist(),
            "actor": self.actor.spec()})
        return directory

    @classmethod
    def load(cls, directory: Path, kinds: dict[str, type[Actor]],
             device: torch.device | str = "auto") -> "NetworkPolicy":
        """Rebuild the policy saved in ``directory`` on ``device``, wherever it was trained; ``kinds`` maps
        ``actor.json``'s kind to its class."""
        device = resolve_device(device)
        directory = Path(directory)
        spec_path, weights_path = directory / "actor.json", directory / "actor.safetensors"
        spec = require_format(read_json(spec_path), spec_path, FORMAT_VERSION, RERUN)
        kind = spec.get("kind")
        if not isinstance(kind, str) or kind not in kinds:
            raise CheckpointError(f"{spec_path} names actor kind {kind!r}, which this swfp does not know "
                                  f"(it knows {', '.join(sorted(kinds))}); {RERUN}")
        try:
            chunk = int(spec.get("action_chunk", 1))  # files from before chunked fine-tuning act one action
            actor = kinds[kind].from_spec(spec["obs_dim"], spec["act_dim"] * chunk, spec["actor"])
            low, high = np.array(spec["action_low"], dtype=np.float32), np.array(spec["action_high"], dtype=np.float32)
            if low.shape != (spec["act_dim"],) or high.shape != low.shape:
                raise ValueError(f"action bounds of sizes {low.shape} and {high.shape} for act_dim {spec['act_dim']}")
            tensors = load_tensors(weights_path)
            obs_mean, obs_std = observation_statistics(tensors, spec["obs_dim"], weights_path)
            load_state_strict(actor, {k.removeprefix("actor."): v for k, v in tensors.items()}, weights_path)
            return cls(actor.eval(), spec["algorithm"], spec["task"], obs_mean, obs_std, low, high, device, chunk)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as exc:  # a field missing, of the wrong type or out of range
            raise CheckpointError(f"{spec_path} is incomplete or does not match its weights ({exc!r}); "
                                  f"{RERUN}") from exc
