"""What every fine-tuning method shares, so a method's own file holds only what is specific to it.

* :class:`FineTuner` — construction from a pre-trained run (its flow policy, observation statistics,
  action bounds and the demonstrations it was cloned from), :meth:`~FineTuner.learn` through the
  shared :func:`swfp.runner.run`, saving, the method's numpy generator, wall-time accounting and the
  checkpoint state of all of these. A method that does not fine-tune (``bc``) is this class alone.
* :class:`OffPolicyLearner` — adds what every off-policy method shares: the replay of demonstrations
  and online data (:class:`~swfp.buffer.MixedReplay`), the clipped-double-Q :class:`~swfp.critic.Critic`,
  an optional critic warm-up on the demonstrations before the first environment step, and
  ``utd_ratio`` updates per environment step. A method supplies :meth:`~OffPolicyLearner.update`
  (one gradient step on a batch), :meth:`~OffPolicyLearner.target_actions` (the critic's
  ``a' ~ π(·|s')``) and its policy.

**Devices.** A learner lives on its policy's device (``from_pretrained(..., device=...)``): every network,
optimiser and tensor an update touches is there. The replay and the demonstrations stay on the host and
each update's batch is moved once (:meth:`OffPolicyLearner.sample_batch`); environments run on the host.

A method whose policy is not a flow cascade acts through a
:class:`~swfp.algorithms.network_policy.NetworkPolicy` (its own module: the saved format).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swfp.buffer import Batch, MixedReplay, ReplayBuffer
from swfp.chunks import chunk_transitions, discounted_returns
from swfp.critic import Critic, CriticConfig
from swfp.data import Dataset, load_dataset, normalize_actions
from swfp.devices import resolve_device
from swfp.policy import Policy
from swfp.runio import read_json
from swfp.runner import RunConfig, SavablePolicy, restore_rng, rng_state, run


@dataclass
class OffPolicyConfig:
    """The fields every off-policy method shares (each method's config extends it)."""

    critic: CriticConfig = field(default_factory=CriticConfig)
    batch_size: int = 256
    utd_ratio: int = 1                   # updates per environment step
    offline_fraction: float = 0.5        # share of each batch drawn from the demonstrations
    critic_warmup_steps: int = 2_000     # critic steps on the demonstrations before the first env step
    learning_starts: int = 0             # env steps before the first update (random actions if no demos)
    replay_capacity: int = 1_000_000

    def __post_init__(self):
        if isinstance(self.critic, dict):
            self.critic = CriticConfig(**self.critic)
        for name in ("batch_size", "utd_ratio", "replay_capacity"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.critic_warmup_steps < 0 or self.learning_starts < 0:
            raise ValueError("critic_warmup_steps and learning_starts must be >= 0")
        if not 0.0 <= self.offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {self.offline_fraction}")


class FineTuner:
    """Base of every method: a :class:`swfp.runner.Learner` built from a pre-trained run.

    ``name`` is the ``--algo`` value, ``description`` its one line in ``swfp algos``, and
    ``config_class`` its typed configuration (``None``: the method has no hyper-parameters). The learner's
    ``device`` is its policy's: a method builds its networks there.
    """

    name = "bc"
    description = "the pre-trained flow, no fine-tuning (evaluated on the same schedule)"
    config_class: type | None = None
    supports_chunks = True  # whether the method learns on action chunks (:mod:`swfp.chunks`)

    def __init__(self, policy: Policy, demonstrations: Dataset | None, config=None, total_env_steps: int = 300_000):
        if config is None and self.config_class is not None:
            config = self.config_class()
        self.config = config
        self._policy = policy
        self.device = policy.device
        # what acts, is evaluated and is saved: the flow itself unless a method acts with another network
        self.acting: SavablePolicy = policy
        self.obs_dim, self.act_dim = int(policy.obs_mean.shape[0]), policy.act_dim * policy.action_chunk
        self.total_env_steps = total_env_steps
        self.demonstrations_sha256 = demonstrations.fingerprint() if demonstrations is not None else None
        self.rng = np.random.default_rng()
        self.env_step = 0
        self.seconds: dict[str, float] = {}  # cumulative wall time per phase, for the per-env-step split
        self._records: list[tuple[str, dict[str, float]]] = []  # events for the runner to log (pop_records)

    # -- construction and the user API --------------------------------------------------------
    @classmethod
    def from_pretrained(cls, run_dir, env: str | None = None, config=None, dataset: str | None = None,
                        total_env_steps: int = 300_000, device: torch.device | str = "auto"):
        """Start from a pre-trained run: its policy, and (unless ``dataset`` is given) the
        demonstrations it was trained on, read from its ``config.json``. The learner trains on ``device``
        (``"auto"``: CUDA when available, else the CPU), whatever device pre-trained the run."""
        policy = Policy.load(Path(run_dir), device)
        if env is not None and env != policy.task_id:
            raise ValueError(f"{run_dir} was trained on {policy.task_id!r}, not {env!r}")
        if policy.action_chunk != 1 and not cls.supports_chunks:
            raise ValueError(f"{cls.name} does not fine-tune action-chunked policies (this run's chunks hold "
                             f"{policy.action_chunk} actions); use an off-policy method (`swfp algos`), or pre-train "
                             "with --action-chunk 1")
        if dataset is None:
            dataset = read_json(Path(run_dir) / "config.json").get("dataset")
            if dataset is None:
                raise ValueError(f"{run_dir}/config.json names no dataset; pass the demonstrations with --dataset")
        return cls(policy, load_dataset(dataset, policy.task_id), config, total_env_steps)

    def learn(self, total_env_steps: int | None = None, out=None, seed: int = 0, num_envs: int = 1,
              eval_every: int | None = None, eval_episodes: int | None = None, checkpoint_every: int | None = None,
              resume: bool = False, device: torch.device | str | None = None) -> dict:
        """Fine-tune online (see :func:`swfp.runner.run`) on the learner's device; returns the run summary.

        ``device``, if given, must be that device: the networks and their optimisers were built there by
        ``from_pretrained(..., device=...)`` (an optimiser holds the very parameters it updates, so a learner is
        not moved afterwards). A resumed run may use another device than the one that started it.
        """
        if device is not None and resolve_device(device) != self.device:
            raise ValueError(f"this {self.name} learner was built on {self.device}, not {resolve_device(device)}: "
                             f"build it there with from_pretrained(..., device={str(device)!r}) (or swfp.make)")
        if total_env_steps is not None:
            self.total_env_steps = total_env_steps
        run_config = RunConfig(task=self._policy.task_id, total_env_steps=self.total_env_steps, num_envs=num_envs,
                               seed=seed, eval_every=eval_every, eval_episodes=eval_episodes,
                               checkpoint_every=checkpoint_every).resolved()
        if not resume:
            self.rng = np.random.default_rng(seed)  # on resume, the checkpoint restores it
        self.prepare(run_config)
        out = Path(out or f"runs/{self.name}-{run_config.task}-seed{seed}")
        return run(self, run_config, out, resume=resume,
                   run_config={"algorithm": self.name, "run": run_config, "config": self.config,
                               **self.derived_config()})

    def prepare(self, run_config: RunConfig) -> None:
        """Hook before the loop starts (e.g. SWFP's evaluation callback for compaction checks)."""

    def derived_config(self) -> dict:
        """Settings derived from the budget, saved in ``config.json`` beside the config."""
        return {}

    def save(self, path) -> Path:
        return self.policy().save(Path(path))

    @contextlib.contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    # -- the runner's Learner interface -------------------------------------------------------
    def policy(self) -> SavablePolicy:
        return self.acting

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Exploration actions: the current policy's stochastic ones."""
        return self.policy().normalized_actions(obs)

    def observe(self, obs, actions, rewards, next_obs, terminals, truncations=None, steps=None) -> None:
        pass

    def warm_up(self) -> dict[str, float]:
        """Offline work before the first environment step (and before the pre-fine-tuning evaluation)."""
        return {}

    def train(self, env_step: int) -> dict[str, float]:
        self.env_step = env_step
        return {}

    def record(self, stream: str, metrics: dict[str, float]) -> None:
        """Queue an event for ``<stream>.csv`` (the runner writes it at the current env step)."""
        self._records.append((stream, metrics))

    def pop_records(self) -> list[tuple[str, dict[str, float]]]:
        records, self._records = self._records, []
        return records

    def status(self) -> dict[str, float]:
        return {f"{k}_seconds": v for k, v in self.seconds.items()}

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng), "env_step": self.env_step, "seconds": dict(self.seconds),
                "total_env_steps": self.total_env_steps}

    def load_state_dict(self, state: dict) -> None:
        restore_rng(self.rng, state["rng"])
        self.env_step, self.seconds = state["env_step"], dict(state["seconds"])


class OffPolicyLearner(FineTuner):
    """Replay + critic + ``utd_ratio`` updates per environment step; a method defines :meth:`update`."""

    config_class = OffPolicyConfig
    use_demonstrations = True  # False: online data only (SAC from scratch)

    def __init__(self, policy: Policy, demonstrations: Dataset | None, config=None, total_env_steps: int = 300_000):
        super().__init__(policy, demonstrations, config, total_env_steps)
        cfg = self.config
        self.critic = Critic(self.obs_dim, self.act_dim, cfg.critic, self.device)
        online = ReplayBuffer(self.obs_dim, self.act_dim, cfg.replay_capacity)
        if self.use_demonstrations and demonstrations is not None and cfg.offline_fraction > 0:
            offline = self.demonstration_buffer(demonstrations)
            self.replay = MixedReplay(offline, online, cfg.offline_fraction)
        else:
            self.replay = MixedReplay(ReplayBuffer(self.obs_dim, self.act_dim, 1), online, 0.0)

    def demonstration_buffer(self, demonstrations: Dataset) -> ReplayBuffer:
        """The demonstrations as replay rows, in actions of the policy's chunk size (:func:`chunk_transitions`)."""
        d = demonstrations
        actions = normalize_actions(d.actions, self._policy.action_low, self._policy.action_high)
        rows = chunk_transitions(d.observations, actions, d.rewards, d.next_observations, d.terminals, d.timeouts,
                                 self._policy.action_chunk, self.config.critic.gamma)
        return ReplayBuffer.from_transitions(**rows)

    # -- what a method defines ------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of the method on a normalised batch (critic, and actor if it has one)."""
        raise NotImplementedError

    def target_actions(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``a' ~ π(·|s')`` for the critic target, and ``log π(a'|s')`` if the target has an entropy term."""
        raise NotImplementedError

    def warmup_update(self, batch: Batch) -> dict[str, float]:
        """One step of the warm-up on the demonstrations: the critic alone unless a method says otherwise."""
        return self.td_update(batch)

    def after_updates(self, previous_step: int, env_step: int) -> dict[str, float]:
        """Hook after the env step's updates (SWFP appends a block here every S steps)."""
        return {}

    # -- shared machinery -------------------------------------------------------------------------
    def td_update(self, batch: Batch, alpha: float | torch.Tensor = 0.0) -> dict[str, float]:
        """One critic step toward ``r + γ(1 − d)(min Q̄(s', a') − α·log π(a'|s'))`` with ``a'`` from the method."""
        with self.timed("critic"):
            with torch.no_grad():
                next_actions, next_log_prob = self.target_actions(batch.next_observations)
            return self.critic.update(batch, next_actions, next_log_prob, alpha)

    def sample_batch(self) -> Batch:
        """A replay batch on the learner's device, observations normalised by the pre-trained run's statistics:
        sampled on the host, moved in one copy per field (the replay stays on the host, :mod:`swfp.buffer`)."""
        batch = self.replay.sample(self.config.batch_size, self.rng).to(self.device)
        norm = self._policy.normalize_obs
        return dataclasses.replace(batch, observations=norm(batch.observations),
                                   next_observations=norm(batch.next_observations))

    def sample_states(self, n: int) -> torch.Tensor:
        return self._policy.normalize_obs(self.replay.sample(n, self.rng).observations)

    def observe(self, obs, actions, rewards, next_obs, terminals, truncations=None, steps=None) -> None:
        """Store the transitions; truncation needs no flag (``next_obs`` is the true next state, and only
        ``terminals`` stop bootstrapping). For action chunks, ``rewards`` are ``(n, H)`` and ``steps`` the
        actions executed: the row keeps their discounted sum (:func:`swfp.chunks.discounted_returns`)."""
        self.replay.online.add(*self.transitions(obs, actions, rewards, next_obs, terminals, steps))

    def transitions(self, obs, actions, rewards, next_obs, terminals, steps=None) -> tuple:
        """The replay row of an observed step or chunk: ``(s, a, r, s', terminal, steps)``."""
        if steps is None:
            return obs, actions, rewards, next_obs, terminals, 1
        return obs, actions, discounted_returns(rewards, steps, self.config.critic.gamma), next_obs, terminals, steps

    def warm_up(self) -> dict[str, float]:
        """``critic_warmup_steps`` of :meth:`warmup_update` on the demonstrations (none without them)."""
        metrics: dict[str, float] = {}
        if len(self.replay.offline) > 1:
            online_critic_seconds = self.seconds.get("critic", 0.0)
            with self.timed("warmup"):
                for _ in range(self.config.critic_warmup_steps):
                    metrics = self.warmup_update(self.sample_batch())
            self.seconds["critic"] = online_critic_seconds  # "critic" is the online phase's; this was "warmup"
        return metrics

    def train(self, env_step: int) -> dict[str, float]:
        """``utd_ratio`` updates per new environment step (after ``learning_starts``), then the method's hook."""
        cfg = self.config
        new_steps, previous = env_step - self.env_step, self.env_step
        self.env_step = env_step
        metrics: dict[str, float] = {}
        if env_step > cfg.learning_starts:
            with self.timed("update"):
                for _ in range(cfg.utd_ratio * new_steps):
                    with self.timed("replay"):
                        batch = self.sample_batch()
                    metrics = self.update(batch)
        metrics.update(self.after_updates(previous, env_step))
        return metrics

    def state_dict(self) -> dict:
        return {**super().state_dict(), "critic": self.critic.state_dict(),
                "online": {k: torch.as_tensor(v) for k, v in self.replay.online.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.replay.online.load_state_dict({k: v.numpy() for k, v in state["online"].items()})


def actor_seconds(status: dict) -> float:
    """A run's policy-improvement time from its learner's clocks (``status``: the ``<phase>_seconds`` a
    learner reports). SWFP times all its block work as ``block``: the live block's steps, which run inside
    ``update`` beside the critic's, and the judging, appending and compaction of blocks after the updates;
    the other methods' actor step is their ``update`` less the critic's TD steps and the replay sampling."""
    if "blocks" in status:
        return status.get("block_seconds", 0.0)
    return status.get("update_seconds", 0.0) - status.get("critic_seconds", 0.0) - status.get("replay_seconds", 0.0)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
    """One step on ``loss``; with ``max_grad_norm``, the global norm of the optimiser's gradients clipped first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
