"""Re-scoring a finished run's final policy on fixed episodes (``swfp bench report --rescore N``).

The returns a run writes during training come from its own evaluation episodes (seeded by the run
seed) and its own ``eval_episodes``, so two trials of a grid are scored on different initial states. Re-scoring
loads each trial's final policy with ``swfp.load`` (any method) and evaluates it with the one evaluator
(:func:`swfp.evaluate.evaluate_seeded`) on ``N`` episodes seeded ``RESCORE_SEED + i``, policy noise seeded
``RESCORE_SEED``, stochastic and deterministic: every trial of a task meets the same episodes, and
``swfp eval RUN --episodes N --seed RESCORE_SEED`` gives any row again.

The result is kept in the trial's ``rescore.json`` with the episodes, the seed and the SHA-256 of the
policy files, and reused while they match: a report regenerated with more trials evaluates only the new
ones, and a policy that changed (a run re-done) is evaluated again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from swfp.evaluate import evaluate_seeded, mean_half_width
from swfp.loader import FILES, load
from swfp.runio import CheckpointError, atomic_write_json, read_json

# far from the seeds runs evaluate on during training (run seed + 1,000,000) and pre-train on (+ 100,000)
RESCORE_SEED = 10_000_000
RESCORE_FILE = "rescore.json"
FORMAT_VERSION = 1


def policy_digest(run_dir: Path) -> str | None:
    """SHA-256 over the run's saved policy files (``None`` if it kept none)."""
    files = sorted(path for path in Path(run_dir).iterdir() if path.name in FILES) if Path(run_dir).is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def rescore(run_dir: Path, episodes: int, seed: int = RESCORE_SEED) -> dict | None:
    """The run's final policy on ``episodes`` episodes from ``seed``, stochastic and deterministic (``returns``,
    ``det_returns``, their means and 95 % half-widths); ``None`` if the run kept no policy. Read from
    ``rescore.json`` when it holds these episodes for these policy files, else evaluated and written there."""
    if episodes < 2:
        raise ValueError(f"re-scoring needs at least 2 episodes (for the interval of the mean), got {episodes}")
    run_dir = Path(run_dir)
    digest = policy_digest(run_dir)
    if digest is None:
        return None
    key = {"format_version": FORMAT_VERSION, "episodes": episodes, "seed": seed, "policy_sha256": digest}
    cache = run_dir / RESCORE_FILE
    if cache.is_file():
        try:
            cached = read_json(cache)
        except CheckpointError:  # a corrupt cache is only a cache: evaluate again and overwrite it
            cached = {}
        if all(cached.get(k) == v for k, v in key.items()):
            return cached
    policy = load(run_dir, "cpu")  # on the CPU on every machine, so the cached numbers are every machine's
    record = dict(key)
    for label, deterministic in (("", False), ("det_", True)):
        returns = evaluate_seeded(policy, policy.task_id, episodes, seed, deterministic).returns
        record.update({f"{label}returns": returns.tolist(), f"{label}return_mean": float(returns.mean()),
                       f"{label}return_ci": mean_half_width(returns)})
    atomic_write_json(cache, record)
    return record
