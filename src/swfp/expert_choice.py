"""Which snapshots of an expert run ship: the expert, and the "medium" policy of D4RL-style datasets.

A SAC run's return rises and dips, and its training evaluations (10 episodes each) are noisy, so its last
snapshot is not its best: the Hopper expert shipped before issue 37 was its last, 1903 after a peak of
3025 at 150k env steps. After the run (:func:`choose`):

* **Expert.** The ``shortlist`` snapshots with the highest training return (stochastic, ``eval.csv``) are
  evaluated again on ``expert_episodes`` (≥ 50 by default) stochastic episodes; the best one ships.
* **Medium.** D4RL's "medium" policy is a SAC run stopped early, at about a third of the expert's return
  (Fu et al., 2020, arXiv 2004.07219). Among the snapshots before the expert's (the others, in a run too
  short to improve after its first snapshot), the ``shortlist`` whose training return lies nearest
  ``medium_fraction`` × the expert's are evaluated again on ``medium_episodes`` (≥ 20) stochastic
  episodes, and the nearest ships. Stochastic, because the data are:
  ``swfp demos`` rolls the policy out with its noise (the shipped Ant medium scored 133 on 5 deterministic
  episodes and 62 in its data).
* **Fresh numbers.** The best of several candidates scores high on the episodes it was picked on, by
  chance as well as by merit, so both chosen policies are evaluated once more on ``fresh_episodes``
  episodes no choice saw; ``expert.json`` and the README report those.

Episode ``i`` of the re-evaluations is seeded ``run seed + 2,000,000 + i`` (the same episodes for every
candidate, so they are compared on equal terms), of the fresh evaluation ``run seed + 3,000,000 + i``;
the training evaluations use ``+ 1,000,000``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from swfp.evaluate import evaluate_seeded
from swfp.logger import read_csv
from swfp.runio import atomic_write_json, read_json
from swfp.runner import SNAPSHOTS

SELECTION_SEED_OFFSET, FRESH_SEED_OFFSET = 2_000_000, 3_000_000


@dataclass
class ChoiceConfig:
    shortlist: int = 5             # snapshots re-evaluated for each choice, ranked by their training return
    expert_episodes: int = 50      # stochastic episodes per expert candidate
    medium_episodes: int = 20      # stochastic episodes per medium candidate
    medium_fraction: float = 1 / 3  # D4RL's medium level, a fraction of the expert's return
    fresh_episodes: int = 100      # episodes of the final evaluation of the two chosen policies

    def __post_init__(self):
        for name in ("shortlist", "expert_episodes", "medium_episodes", "fresh_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"choice.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.medium_fraction < 1:
            raise ValueError(f"choice.medium_fraction must be in (0, 1), got {self.medium_fraction}")


def returns_summary(returns: np.ndarray) -> dict:
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "episodes": len(returns)}


def shortlist_and_pick(train_returns: dict[int, float], evaluate: Callable[[int], np.ndarray], size: int,
                       badness: Callable[[float], float]) -> tuple[dict, list[dict]]:
    """The ``size`` snapshots (by env step) whose training return ``badness`` ranks best, evaluated again by
    ``evaluate(step)``; the one whose new mean return ``badness`` ranks best, and every candidate's row."""
    ranked = sorted(train_returns, key=lambda step: badness(train_returns[step]))[:size]
    rows = [{"step": step, "train_return": train_returns[step], **returns_summary(evaluate(step))} for step in ranked]
    return min(rows, key=lambda row: badness(row["return_mean"])), rows


def choose(run_dir: Path, config: ChoiceConfig, device: torch.device | str = "auto") -> dict:
    """Choose the expert and medium snapshots of the finished expert run ``run_dir`` (evaluated on ``device``);
    save them as ``expert/`` and ``medium/`` and write ``expert.json`` (the choice, every candidate's numbers,
    the fresh ones)."""
    from swfp.loader import load

    run_dir = Path(run_dir)
    run = read_json(run_dir / "config.json")["run"]
    task, seed = run["task"], run["seed"]
    snapshots = {int(p.name) for p in (run_dir / SNAPSHOTS).iterdir()} if (run_dir / SNAPSHOTS).is_dir() else set()
    train_returns = {int(r["step"]): r["return_mean"] for r in read_csv(run_dir / "eval.csv")
                     if int(r["step"]) in snapshots and r["step"] > 0}  # step 0 is the untrained actor
    if not train_returns:
        raise ValueError(f"{run_dir} has no snapshot of a trained actor to choose from (snapshots/ and eval.csv)")

    def snapshot(step: int):
        return load(run_dir / SNAPSHOTS / str(step), device)

    def returns(step: int, episodes: int, offset: int) -> np.ndarray:
        return evaluate_seeded(snapshot(step), task, episodes, seed + offset).returns

    expert, expert_rows = shortlist_and_pick(
        train_returns, lambda s: returns(s, config.expert_episodes, SELECTION_SEED_OFFSET), config.shortlist,
        lambda r: -r)
    target = config.medium_fraction * expert["return_mean"]
    others = {step: r for step, r in train_returns.items() if step != expert["step"]}
    if not others:
        raise ValueError(f"{run_dir} has a single snapshot of a trained actor: the expert and the medium policy need "
                         "two; evaluate more often (--eval-every)")
    earlier = {step: r for step, r in others.items() if step < expert["step"]}
    medium, medium_rows = shortlist_and_pick(  # a run too short to improve after its first snapshot has no earlier one
        earlier or others, lambda s: returns(s, config.medium_episodes, SELECTION_SEED_OFFSET), config.shortlist,
        lambda r: abs(r - target))

    info = {"task": task, "seed": seed, "env_steps": run["total_env_steps"], "choice": asdict(config)}
    for quality, chosen, rows in (("expert", expert, expert_rows), ("medium", medium, medium_rows)):
        snapshot(chosen["step"]).save(run_dir / quality)
        evaluation = returns_summary(returns(chosen["step"], config.fresh_episodes, FRESH_SEED_OFFSET))
        info[quality] = {"step": chosen["step"], "selection": rows,
                         "evaluation": {**evaluation, "eval_seed": seed + FRESH_SEED_OFFSET, "deterministic": False}}
    info["medium"]["target"] = target
    info["medium"]["fraction_of_expert"] = (info["medium"]["evaluation"]["return_mean"]
                                            / info["expert"]["evaluation"]["return_mean"])
    atomic_write_json(run_dir / "expert.json", info)
    return info
