"""Behaviour cloning of a flow policy by conditional flow matching.

Loss (rectified/linear path, DESIGN.md §1): ``E ‖v_θ(s, (1−t)x0 + t a, t) − (a − x0)‖²`` with
``x0 ~ N(0, I)``, ``t ~ U[0, 1]`` and ``a`` the demonstrated action (chunk) in ``[-1, 1]`` units.

Optimisation follows common diffusion-policy practice (Chi et al., 2023): AdamW, linear warm-up
then cosine decay of the learning rate, and an exponential moving average of the weights which is
what gets evaluated and saved. Observations are standardised with the dataset's statistics, which
travel with the checkpoint.

On a device the standardised dataset is copied there once (a fixed set of a few hundred MB at most:
1M D4RL transitions of a 17-dimensional task are ~100 MB), so a gradient step moves no data: only the
batch's indices, drawn on the host by the run's numpy generator.

Two defaults decide whether a short run keeps the modes of multimodal demonstrations (issue 37,
``tests/test_pretrain.py``). Flow matching first fits the mean velocity, whose samples form one blob
at the data's mean, and only later the action-dependent part that splits it into the modes:

* **Learning rate 1e-3.** At 3e-4 a 3000-step run is still in the blob phase (2 modes at ±0.5 in 1-D:
  ~20 % of samples within 0.2 of each mode, 30 % near 0; 10000 steps were needed for ~47 %); at 1e-3 it
  splits them (41–47 % each). The warm-up's length (100 or 1000 steps) made no difference.
* **EMA warm-up.** A fixed decay of 0.999 averages over the last ~1000 steps, so after 3000 steps
  the average still holds the blob: 4 modes in 2-D, 85 % of the raw network's samples lay within
  0.2 of a mode and 44 % of its EMA's. Chi et al.'s warm-up (``diffusion_policy``'s ``EMAModel``,
  ``power: 0.75`` in its configs) lets the average forget at the pace training moves:
  ``decay_n = min(ema_decay, 1 − (1 + n)^−ema_power)``, 0.999 from n ≈ 10k steps on, so a long run
  averages as before.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from swfp.data import Dataset, action_bounds, load_dataset, normalize_actions
from swfp.devices import resolve_device, to_device
from swfp.envs import env_dims, task_spec
from swfp.evaluate import evaluate_seeded, seed_columns
from swfp.flow import FlowConfig, FlowPolicy
from swfp.logger import MetricLogger, make_progress, plot_learning_curve
from swfp.policy import Policy
from swfp.runio import atomic_write_json, write_run_metadata


@dataclass
class PretrainConfig:
    dataset: str
    task: str | None = None          # None: the task recorded in the dataset
    steps: int = 100_000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 1_000
    ema_decay: float = 0.999         # the average's decay once warmed up
    ema_power: float = 0.75          # EMA warm-up (Chi et al.): decay_n = min(ema_decay, 1 − (1 + n)^−ema_power)
    action_chunk: int | None = None  # None: the task's default
    hidden_dims: tuple[int, ...] | None = None  # velocity network widths; None: the task's default
    euler_steps: int = 10            # K, fixed Euler steps of the sampler (h = 1/K)
    eval_every: int = 0              # 0: evaluate only at the end
    eval_episodes: int | None = None  # None: the task's default
    log_every: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.hidden_dims is not None:
            self.hidden_dims = tuple(self.hidden_dims)
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_power <= 0:
            raise ValueError(f"ema_power must be > 0, got {self.ema_power}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.eval_every < 0 or self.log_every < 1:
            raise ValueError("lr must be > 0, warmup_steps and eval_every >= 0, log_every >= 1")
        if self.action_chunk is not None and self.action_chunk < 1:
            raise ValueError(f"action_chunk must be >= 1, got {self.action_chunk}")

    def resolve(self, dataset: Dataset) -> "PretrainConfig":
        """Fill every ``None`` from the dataset and the task's defaults (what gets saved)."""
        task = self.task or dataset.metadata.get("task")
        if not task:
            raise ValueError(f"dataset {self.dataset} records no task: pass --task")
        spec = task_spec(task)
        return PretrainConfig(**{**self.__dict__, "task": task,
                                 "action_chunk": self.action_chunk or spec.action_chunk,
                                 "hidden_dims": self.hidden_dims or spec.hidden_dims,
                                 "eval_episodes": self.eval_episodes or spec.eval_episodes})


def chunk_targets(actions: np.ndarray, episode_ends: np.ndarray, horizon: int) -> np.ndarray:
    """``(N, H·d)`` targets: the actions ``a_t … a_{t+H−1}`` of the same episode, padded at the end of
    an episode by repeating its last action (as Diffusion Policy does)."""
    if horizon == 1:
        return actions
    n = len(actions)
    # index of the last transition of each row's episode
    end_of = np.searchsorted(episode_ends, np.arange(n))
    last = episode_ends[np.minimum(end_of, len(episode_ends) - 1)]
    idx = np.minimum(np.arange(n)[:, None] + np.arange(horizon)[None], last[:, None])
    return actions[idx].reshape(n, -1)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def ema_decay_at(updates: int, max_decay: float, power: float) -> float:
    """The EMA's decay at its ``updates``-th update (0 first): ``min(max_decay, 1 − (1 + n)^−power)``, Chi et
    al.'s warm-up; the first update copies the weights, and the average's horizon grows with training."""
    return min(max_decay, 1.0 - (1.0 + updates) ** -power)


def pretrain(config: PretrainConfig, out: Path, device: torch.device | str = "auto") -> dict:
    """Train the flow policy on ``config.dataset`` on ``device`` and write the run directory ``out`` (the device
    goes into ``meta.json``: the saved policy loads on any)."""
    device = resolve_device(device)
    out = Path(out)
    dataset = load_dataset(config.dataset, config.task)
    config = config.resolve(dataset)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    obs_dim, act_dim = env_dims(config.task)
    low, high = action_bounds(config.task)
    obs_mean, obs_std = dataset.observation_stats()
    observations = torch.from_numpy((dataset.observations - obs_mean) / obs_std).to(device)
    episode_ends = np.flatnonzero(dataset.terminals | dataset.timeouts)
    if len(episode_ends) == 0 or episode_ends[-1] != len(dataset) - 1:
        episode_ends = np.append(episode_ends, len(dataset) - 1)
    targets = torch.from_numpy(chunk_targets(normalize_actions(dataset.actions, low, high), episode_ends,
                                             config.action_chunk).astype(np.float32)).to(device)

    flow = FlowPolicy(obs_dim, act_dim * config.action_chunk,
                      FlowConfig(hidden_dims=config.hidden_dims, num_steps=config.euler_steps)).to(device)
    ema = copy.deepcopy(flow).requires_grad_(False)
    optimizer = torch.optim.AdamW(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.steps))
    policy = Policy(ema, config.task, obs_mean, obs_std, low, high, config.action_chunk, device)

    write_run_metadata(out, config, config.seed, kind="pretrain", device=device,
                       dataset_sha256=dataset.fingerprint())
    logger = MetricLogger(out)
    dataset_return = float(np.mean(dataset.episode_returns()))
    start, running_loss, window = time.time(), 0.0, 0

    def run_eval(step: int) -> dict:
        seed = config.seed + 100_000
        summary = evaluate_seeded(policy, config.task, config.eval_episodes, seed).summary()
        logger.log("eval", step, {**{k: summary[k] for k in ("return_mean", "return_std", "return_iqm")},
                                  **seed_columns(config.eval_episodes, seed)})
        return summary

    with make_progress() as progress:
        bar = progress.add_task("flow-matching BC", total=config.steps, status="")
        for step in range(1, config.steps + 1):
            idx = to_device(rng.integers(0, len(dataset), size=config.batch_size), device, dtype=None)
            loss = flow.flow_matching_loss(observations[idx], targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                decay = ema_decay_at(step - 1, config.ema_decay, config.ema_power)
                for e, p in zip(ema.parameters(), flow.parameters()):
                    e.lerp_(p, 1 - decay)
            running_loss += loss.item()
            window += 1
            if step % config.log_every == 0 or step == config.steps:
                logger.log("train", step, {"loss": running_loss / window, "lr": scheduler.get_last_lr()[0],
                                           "steps_per_second": step / (time.time() - start)})
                progress.update(bar, status=f"loss {running_loss / window:.4f}")
                running_loss, window = 0.0, 0
            if config.eval_every and step % config.eval_every == 0 and step != config.steps:
                eval_summary = run_eval(step)
                progress.update(bar, status=f"eval return {eval_summary['return_mean']:.1f}")
            progress.advance(bar)
    train_seconds = time.time() - start
    policy.save(out)
    eval_summary = run_eval(config.steps)
    logger.close()
    plot_learning_curve(out, [("train", "loss"), ("eval", "return_mean")], f"flow BC on {config.task}",
                        {"dataset mean": dataset_return})
    summary = {"task": config.task, "dataset": str(config.dataset), "dataset_return_mean": dataset_return,
               "bc_eval": eval_summary, "train_seconds": round(train_seconds, 1), "steps": config.steps}
    atomic_write_json(out / "summary.json", summary)
    return summary
