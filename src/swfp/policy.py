"""The user-facing policy: numpy in, numpy out, environment action units.

:class:`EnvPolicy` is what every loaded policy shares, whatever method trained it (the observation
statistics, the action box, ``predict`` and ``log_prob``); the flow policy is one of them, the policies
of the methods that act with another network are :class:`swfp.algorithms.network_policy.NetworkPolicy`.

A :class:`Policy` bundles the SWFP cascade — the base flow and any accepted JKO blocks, acting on
normalised observations in the normalised action box (a behaviour-cloned policy is a cascade with
no blocks) — with the observation statistics of its training data and the task's action bounds,
so a checkpoint is self-contained. On disk (a run directory or any directory holding both files):

* ``policy.json`` — format version, task id, sizes, action chunk, base flow config, one config
  per block, action bounds;
* ``policy.safetensors`` — base flow weights (``flow.*``), block weights (``blocks.<i>.*``, τ
  included) and ``obs_mean`` / ``obs_std``.

A policy lives on one device (``device``, ``to``): its networks and observation statistics are there, and
numpy observations go in and numpy actions come out whatever it is. The saved files hold no device
(safetensors stores plain bytes): ``load(..., device=...)`` puts a policy trained anywhere on any device.

Densities in environment units follow from the affine map ``a_env = low + (a + 1)(high − low)/2``:
``log π_env(a_env|s) = log π(a|s) − H · Σ_i log((high_i − low_i)/2)``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from swfp.blocks import BlockConfig, JKOBlock
from swfp.cascade import Cascade
from swfp.devices import resolve_device, to_device, to_host
from swfp.flow import FlowConfig, FlowPolicy
from swfp.runio import (CheckpointError, atomic_write_json, load_state_strict, load_tensors, read_json,
                        require_format, save_tensors)

FORMAT_VERSION = 2  # 2: SiLU velocity fields (1 had Mish; its weights would load but compute another flow)


class EnvPolicy:
    """What every loaded policy shares, whatever method trained it (``swfp.load``): observations standardised
    with its training data's statistics, actions in ``[-1, 1]`` mapped to the task's box, and
    Stable-Baselines3's ``predict(obs, deterministic)`` contract (numpy in, numpy out, env units).

    A subclass gives :meth:`normalized_actions`, :meth:`save`, :meth:`to` for its networks and, where its
    method has an exact density, :meth:`normalized_log_prob`. ``device`` is where its tensors live.
    """

    algorithm: str | None = None  # the method that trained it, where the saved format records it

    def __init__(self, task_id: str, obs_mean: np.ndarray | torch.Tensor, obs_std: np.ndarray | torch.Tensor,
                 action_low: np.ndarray, action_high: np.ndarray, action_chunk: int = 1,
                 device: torch.device | str = "cpu"):
        self.task_id = task_id
        self.device = resolve_device(device)
        self.obs_mean = torch.as_tensor(obs_mean, dtype=torch.float32).to(self.device)
        self.obs_std = torch.as_tensor(obs_std, dtype=torch.float32).to(self.device)
        self.action_low = np.asarray(action_low, dtype=np.float32)
        self.action_high = np.asarray(action_high, dtype=np.float32)
        self.action_chunk = int(action_chunk)
        self.act_dim = int(self.action_low.shape[0])

    # -- what a subclass defines ------------------------------------------------------------------
    def normalized_actions(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Flattened action chunks ``(B, H·d)`` in ``[-1, 1]`` units (what the envs of swfp take)."""
        raise NotImplementedError

    def normalized_log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log π(a|s)`` ``(B,)`` of flattened normalised actions for normalised observations."""
        raise NotImplementedError

    def save(self, directory: Path) -> Path:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "EnvPolicy":
        """Move the policy to ``device`` in place (a subclass moves its networks too); returns it."""
        self.device = resolve_device(device)
        self.obs_mean, self.obs_std = self.obs_mean.to(self.device), self.obs_std.to(self.device)
        return self

    # -- acting ---------------------------------------------------------------------------------
    def normalize_obs(self, obs) -> torch.Tensor:
        """Standardise with the training data's statistics; numpy or torch in, float32 tensor on the policy's
        device out."""
        obs = to_device(obs, self.device)
        if obs.shape[-1] != self.obs_mean.shape[0]:
            raise ValueError(f"observations have size {obs.shape[-1]}, the policy for {self.task_id} "
                             f"expects {self.obs_mean.shape[0]}")
        return (obs - self.obs_mean) / self.obs_std

    def predict(self, obs, deterministic: bool = False) -> np.ndarray:
        """Actions in environment units: ``(B, d)``, or ``(B, H, d)`` for chunked policies; a single
        observation ``(obs_dim,)`` gives a single action. ``deterministic`` gives the method's own
        deterministic action (a flow's chain from the noise mean ``x0 = 0``, a Gaussian actor's tanh of
        its mean). Actions are clipped to the box, as the environment would."""
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.ndim == 1
        a = np.clip(self.normalized_actions(obs[None] if single else obs, deterministic), -1.0, 1.0)
        a = a.reshape(len(a), self.action_chunk, self.act_dim)
        a = self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)
        if self.action_chunk == 1:
            a = a[:, 0]
        return a[0] if single else a

    @torch.no_grad()
    def log_prob(self, obs, actions) -> np.ndarray:
        """Exact log-density of env-unit ``actions`` (``(B, d)`` or ``(B, H, d)``), where the method has one.

        Raises :class:`swfp.flow.InversionError` when an action cannot be traced back through a flow's
        chain (far outside the policy's support, or a velocity field too steep for its step size), and
        ``NotImplementedError`` naming the method for a policy with no exact density.
        """
        obs = np.asarray(obs, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32).reshape(len(obs), self.action_chunk, self.act_dim)
        scale = 0.5 * (self.action_high - self.action_low)
        normalized = (actions - self.action_low) / scale - 1.0
        flat = to_device(normalized.reshape(len(obs), -1), self.device)
        logp = self.normalized_log_prob(self.normalize_obs(obs), flat)
        return to_host(logp) - self.action_chunk * float(np.log(scale).sum())


class Policy(EnvPolicy):
    """A flow policy ready to act: ``predict(obs)`` and ``log_prob(obs, actions)`` in env units."""

    def __init__(self, model: FlowPolicy | Cascade, task_id: str, obs_mean: np.ndarray | torch.Tensor,
                 obs_std: np.ndarray | torch.Tensor, action_low: np.ndarray, action_high: np.ndarray,
                 action_chunk: int = 1, device: torch.device | str = "cpu"):
        """``model`` is moved to ``device`` (it stays the same object: a learner's cascade is the policy's)."""
        super().__init__(task_id, obs_mean, obs_std, action_low, action_high, action_chunk, device)
        self.cascade = (model if isinstance(model, Cascade) else Cascade(model)).to(self.device)
        if self.cascade.act_dim != self.act_dim * self.action_chunk:
            raise CheckpointError(f"flow action size {self.cascade.act_dim} != chunk {self.action_chunk} × action size "
                                  f"{self.act_dim}: the checkpoint's config does not match its weights")

    @torch.no_grad()
    def normalized_actions(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return to_host(self.cascade.sample(self.normalize_obs(obs), deterministic=deterministic)[0])

    def normalized_log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The cascade's exact density: the Euler chain's change of variables, then each block's."""
        return self.cascade.log_prob(obs, actions)

    def to(self, device: torch.device | str) -> "Policy":
        super().to(device)
        self.cascade.to(self.device)
        return self

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        tensors = {f"flow.{k}": v for k, v in self.cascade.base.state_dict().items()}
        tensors.update({f"blocks.{k}": v for k, v in self.cascade.blocks.state_dict().items()})
        tensors.update(obs_mean=self.obs_mean, obs_std=self.obs_std)
        save_tensors(directory / "policy.safetensors", tensors)
        atomic_write_json(directory / "policy.json", {
            "format_version": FORMAT_VERSION, "task": self.task_id, "obs_dim": int(self.obs_mean.shape[0]),
            "act_dim": self.act_dim, "action_chunk": self.action_chunk, "flow": asdict(self.cascade.base.config),
            "blocks": [asdict(block.config) for block in self.cascade.blocks],
            "action_low": self.action_low.tolist(), "action_high": self.action_high.tolist()})
        return directory

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "auto") -> "Policy":
        """A flow policy from a run directory (or its ``policy.json`` / ``policy.safetensors``) on ``device``
        (:func:`~swfp.devices.resolve_device`), wherever it was trained; ``swfp.load`` reads any method's policy."""
        device = resolve_device(device)
        directory = resolve_policy_dir(path)
        spec = require_format(read_json(directory / "policy.json"), directory / "policy.json", FORMAT_VERSION,
                              "pre-train the policy again with this version (`swfp pretrain`)")
        try:
            obs_dim, flat_act_dim = spec["obs_dim"], spec["act_dim"] * spec["action_chunk"]
            cascade = Cascade(FlowPolicy(obs_dim, flat_act_dim, FlowConfig(**spec["flow"])),
                              [JKOBlock(obs_dim, flat_act_dim, BlockConfig(**c)) for c in spec.get("blocks", [])])
            tensors = load_tensors(directory / "policy.safetensors")
            obs_mean, obs_std = observation_statistics(tensors, obs_dim, directory / "policy.safetensors")
            renamed = {("base." + k.removeprefix("flow.")) if k.startswith("flow.") else k: v for k, v in tensors.items()}
            load_state_strict(cascade, renamed, directory / "policy.safetensors")
            return cls(cascade, spec["task"], obs_mean, obs_std, np.array(spec["action_low"]),
                       np.array(spec["action_high"]), spec["action_chunk"], device)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as exc:  # a field missing, of the wrong type or out of range
            raise CheckpointError(f"{directory / 'policy.json'} is incomplete or does not match its weights "
                                  f"({exc!r}); re-create it with `swfp pretrain`") from exc


def observation_statistics(tensors: dict[str, torch.Tensor], obs_dim: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pop the ``obs_mean`` / ``obs_std`` a saved policy acts on, checked against ``obs_dim``."""
    if "obs_mean" not in tensors or "obs_std" not in tensors:
        raise CheckpointError(f"{path} lacks the observation statistics (obs_mean, obs_std); it was not written "
                              "by swfp: re-run the command that made the run")
    obs_mean, obs_std = tensors.pop("obs_mean"), tensors.pop("obs_std")
    if obs_mean.shape != (obs_dim,) or obs_std.shape != (obs_dim,) or not torch.all(obs_std > 0):
        raise CheckpointError(f"{path}: observation statistics do not match obs_dim {obs_dim} or have non-positive "
                              "std; re-run the command that made the run")
    return obs_mean.numpy(), obs_std.numpy()


def resolve_policy_dir(path: Path) -> Path:
    """A run directory holding a flow policy, or the path of its ``policy.json`` / ``policy.safetensors``."""
    path = Path(path)
    if path.is_file() and path.name in ("policy.json", "policy.safetensors"):
        path = path.parent
    if not (path / "policy.json").is_file() and (path / "actor.json").is_file():
        raise CheckpointError(f"{path} holds a policy that is not a flow cascade (actor.json, a reinflow, dsrl, fql, "
                              "sac or rlpd run): swfp.load and swfp eval read it, but fine-tuning starts from a "
                              "pre-trained flow (`swfp pretrain`)")
    if not (path / "policy.json").is_file():
        raise CheckpointError(f"no swfp flow policy at {path}: expected a run directory with policy.json and "
                              "policy.safetensors (made by `swfp pretrain` or `swfp finetune`)")
    return path
