"""``swfp bench report``: aggregate a grid's trials into tables and plots with honest uncertainty.

Per task and method, over seeds: the return before fine-tuning and after (mean), the **IQM** of the
final return, stochastic and deterministic, each with a **95 % stratified bootstrap interval** across seeds, the **probability of
improvement** of SWFP over the method (P(X_swfp > X_method) over seed pairs, with its interval),
the **largest early dip** (the deepest fall of the evaluated return below the pre-fine-tuning
return during the first quarter of the budget, mean over seeds) and the wall time per run. The
interval estimates are rliable's (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical
Precipice"), the maintained implementation of these statistics; with 3 seeds the intervals are
wide, and the table says how many seeds each row has.

A second table lists every trial on its own (few seeds hide nothing then): its returns, its largest
dip over the whole run, where its wall time went per env step (collection, critic, actor or SWFP
block, evaluation) and, for SWFP, its blocks accepted / rejected and compactions. Trials that have
not finished (a grid spread over sessions) are named below the tables with how far they got.

With ``--rescore N`` every finished trial's final policy is also evaluated again on the same N episodes
(:mod:`swfp.rescore`), whatever its method, and a third table puts these numbers, with the same
statistics, beside those the runs wrote during training (each on its own evaluation episodes).

Reads ``RESULTS/runs/<task>/<algo>/seed<s>/{summary.json, eval.csv}`` (what ``swfp bench grid``
writes), and with ``--beside GRID`` the (task, method) pairs of another grid that ``RESULTS`` lacks
(marked ``*``); writes ``report.md``, ``report.csv``, ``report_trials.csv``, ``learning_curves.png``,
``final_iqm.png`` and ``sample_efficiency.png`` into ``RESULTS`` (and ``rescore.csv`` with ``--rescore``).

``swfp bench compare`` (:func:`compare_runs`) is the small sibling for probes of one setting: single
runs, finished or not, side by side at the env steps they share, with what differs in their configs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from swfp.algorithms.base import actor_seconds
from swfp.logger import label_steps, read_csv, save_figure
from swfp.rescore import RESCORE_SEED, rescore
from swfp.runio import atomic_write_text, read_json, write_run_metadata

REFERENCE = "swfp"
EARLY_FRACTION = 0.25
BOOTSTRAP_REPS = 2000
# every interval resamples from its own stream with this seed, so a row whose trials did not change keeps
# its interval when the report is regenerated with more trials beside it
BOOTSTRAP_SEED = 0
# one seed has no spread to resample: its bootstrap interval would be a single point, so none is given
NO_INTERVAL = (float("nan"), float("nan"))


def load_trials(results: Path, beside: list[Path] = ()) -> dict[tuple[str, str], list[dict]]:
    """``(task, algo) -> [trial]``, each trial its summary plus its evaluation history and the grid it came from.

    ``beside``: other grids whose (task, method) pairs that ``results`` does not hold are reported beside
    it (e.g. a new SWFP schedule against the baselines of an earlier grid, run on the same BC flows)."""
    trials: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for grid in (results, *beside):
        found: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for summary_path in sorted(Path(grid).glob("runs/**/seed*/summary.json")):
            summary = json.loads(summary_path.read_text())
            history = read_csv(summary_path.parent / "eval.csv")
            seconds = sum(summary["seconds_per_env_step"].values()) * summary["env_steps"]
            found[summary["task"], summary["algorithm"]].append(
                {**summary, "seed": summary_path.parent.name, "history": history, "wall_seconds": seconds,
                 "grid": str(grid), "run_dir": summary_path.parent})
        if not found:
            raise FileNotFoundError(f"no finished trials under {grid}/runs (expected runs/<task>/<algo>/seed<s>/"
                                    "summary.json, as `swfp bench grid` writes)")
        for key, runs in found.items():
            if key not in trials:
                trials[key] = runs
    return trials


def unfinished_trials(results: Path) -> list[str]:
    """Trial directories without a ``summary.json`` (still running, or stopped to be resumed), each with the
    env step of its last evaluation: the tables leave them out, and the report says so."""
    found = []
    for run in sorted(p for p in Path(results).glob("runs/*/*/seed*") if p.is_dir()):
        if not (run / "summary.json").is_file():
            history = read_csv(run / "eval.csv") if (run / "eval.csv").is_file() else []
            where = f"last evaluation at env step {int(history[-1]['step'])}" if history else "no evaluation yet"
            found.append(f"{run.relative_to(results).as_posix()} ({where})")
    return found


def early_dip(trial: dict) -> float:
    """Deepest fall below the step-0 return within the first quarter of the budget (0 if none)."""
    history = trial["history"]
    horizon = EARLY_FRACTION * trial["env_steps"]
    early = [r["return_mean"] for r in history if r["step"] <= horizon]
    return max(0.0, history[0]["return_mean"] - min(early))


@contextmanager
def seeded_bootstrap():
    """Resample from ``BOOTSTRAP_SEED``, then give the caller's global NumPy state back.

    rliable's stratified bootstraps draw their indices from ``np.random``'s global generator and ignore their
    ``random_state`` argument, so the seed has to be set there."""
    state = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm_interval(scores: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """IQM and its 95 % stratified bootstrap interval per method; ``scores[m]`` is ``(seeds, tasks)``."""
    from rliable import library as rly
    from rliable import metrics

    points, intervals = {}, {}
    for method, method_scores in scores.items():  # one method at a time, so its stream is its own
        with seeded_bootstrap():
            point, interval = rly.get_interval_estimates(
                {method: method_scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=BOOTSTRAP_REPS)
        points[method] = float(point[method][0])
        intervals[method] = ((float(interval[method][0, 0]), float(interval[method][1, 0]))
                             if len(method_scores) > 1 else NO_INTERVAL)
    return points, intervals


def improvement_probability(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """P(reference > other) over seed pairs (ties count half), with its 95 % bootstrap interval."""
    from rliable import library as rly
    from rliable import metrics

    with seeded_bootstrap():
        points, intervals = rly.get_interval_estimates({"pair": (reference, other)},
                                                       metrics.probability_of_improvement, reps=BOOTSTRAP_REPS)
    low, high = np.ravel(intervals["pair"]) if min(len(reference), len(other)) > 1 else NO_INTERVAL
    return float(np.ravel(points["pair"])[0]), float(low), float(high)


def aggregate(trials: dict[tuple[str, str], list[dict]]) -> list[dict]:
    rows = []
    for task in sorted({t for t, _ in trials}):
        methods = sorted(a for t, a in trials if t == task)
        finals = {a: np.array([[tr["return_after"]] for tr in trials[task, a]]) for a in methods}
        iqm, interval = iqm_interval(finals)
        det_finals = {a: np.array([[tr.get("det_return_after", np.nan)] for tr in trials[task, a]]) for a in methods}
        det_iqm, det_interval = iqm_interval(det_finals)
        # a task that reports success (OGBench's cubes): the success rate's IQM over seeds too
        with_success = all("success_rate_after" in tr for a in methods for tr in trials[task, a])
        if with_success:
            success, success_interval = iqm_interval(
                {a: np.array([[tr["success_rate_after"]] for tr in trials[task, a]]) for a in methods})
        for algo in methods:
            runs = trials[task, algo]
            row = {"task": task, "algorithm": algo, "seeds": len(runs),
                   "return_before": float(np.mean([r["return_before"] for r in runs])),
                   "return_after": float(np.mean([r["return_after"] for r in runs])),
                   "iqm_after": iqm[algo], "iqm_low": interval[algo][0], "iqm_high": interval[algo][1],
                   "det_iqm_after": det_iqm[algo], "det_iqm_low": det_interval[algo][0],
                   "det_iqm_high": det_interval[algo][1], "grid": runs[0]["grid"],
                   "early_dip": float(np.mean([early_dip(r) for r in runs])),
                   "wall_hours": float(np.mean([r["wall_seconds"] for r in runs])) / 3600,
                   "p_swfp_better": float("nan"), "p_low": float("nan"), "p_high": float("nan")}
            if with_success:
                row.update(success_after=success[algo], success_low=success_interval[algo][0],
                           success_high=success_interval[algo][1])
            if REFERENCE in finals and algo != REFERENCE:
                row["p_swfp_better"], row["p_low"], row["p_high"] = improvement_probability(finals[REFERENCE],
                                                                                            finals[algo])
            rows.append(row)
    return rows


def trial_rows(trials: dict[tuple[str, str], list[dict]]) -> list[dict]:
    """One row per trial. Times are ms per env step over the whole run (all its sessions): the runner's
    phases, and inside "train" the learner's own clocks: ``critic`` (TD updates) and ``actor`` (the
    method's policy update; SWFP's block training)."""
    rows = []
    for (task, algo), runs in sorted(trials.items()):
        for trial in sorted(runs, key=lambda r: r["seed"]):
            status, nan = trial.get("status", {}), float("nan")
            per_step = {k: 1000 * v for k, v in trial["seconds_per_env_step"].items()}
            per_env_step_ms = 1000 / max(trial["env_steps"], 1)
            critic, actor = per_env_step_ms * status.get("critic_seconds", 0.0), per_env_step_ms * actor_seconds(status)
            rows.append({"task": task, "algorithm": algo, "seed": trial["seed"], "grid": trial["grid"],
                         "return_before": trial["return_before"], "return_after": trial["return_after"],
                         "det_return_after": trial.get("det_return_after", nan),
                         "success_after": trial.get("success_rate_after", nan),
                         "largest_dip": trial.get("largest_dip_below_start", nan),
                         "ms_per_env_step": sum(per_step.values()), "collect_ms": per_step.get("collect", nan),
                         "critic_ms": critic, "actor_ms": actor, "eval_ms": per_step.get("eval", nan),
                         "blocks_accepted": status.get("blocks_accepted", nan),
                         "blocks_rejected": status.get("blocks_rejected", nan),
                         "compactions": status.get("blocks_compactions", nan)})
    return rows


def trial_markdown(rows: list[dict]) -> str:
    success = any(not np.isnan(r["success_after"]) for r in rows)  # a column only where a task reports success
    lines = ["Every trial (ms per env step over the whole run; actor: the method's policy update, SWFP's blocks; "
             "dip: over the whole run)", "",
             "| task | method | seed | before | after | det. after | " + ("success after | " if success else "")
             + "largest dip | ms/step | collect | critic | actor | eval | blocks acc./rej. (compactions) |",
             "| --- | --- | --- | ---: | ---: | ---: | " + ("---: | " if success else "")
             + "---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        blocks = "—" if np.isnan(r["blocks_accepted"]) else \
            f"{r['blocks_accepted']:.0f}/{r['blocks_rejected']:.0f} ({r['compactions']:.0f})"
        rate = (f"{r['success_after']:.2f} | " if not np.isnan(r["success_after"]) else "— | ") if success else ""
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['seed']} | {r['return_before']:.1f} | "
                     f"{r['return_after']:.1f} | {r['det_return_after']:.1f} | {rate}{r['largest_dip']:.1f} | "
                     f"{r['ms_per_env_step']:.1f} | {r['collect_ms']:.1f} | {r['critic_ms']:.1f} | {r['actor_ms']:.1f} | "
                     f"{r['eval_ms']:.1f} | {blocks} |")
    return "\n".join(lines) + "\n"


def bracket(low: float, high: float, digits: int) -> str:
    """An interval as ``[low, high]``, or the reason there is none."""
    return "[— 1 seed]" if np.isnan(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def markdown(rows: list[dict], results: Path) -> str:
    beside = sorted({r["grid"] for r in rows} - {str(results)})
    success = any("success_after" in r for r in rows)  # a column only where a task reports success
    lines = [f"Fine-tuning results from `{results}` (IQM over seeds with 95 % stratified bootstrap intervals, "
             f"rliable; stochastic and deterministic return; early dip: deepest fall below the start in the first "
             f"{EARLY_FRACTION:.0%} of the budget)" + (f"; rows marked * are from {', '.join(f'`{b}`' for b in beside)}"
                                                     if beside else ""), "",
             "| task | method | seeds | before | after (mean) | after IQM [95 % CI] | det. after IQM [95 % CI] | "
             + ("success after IQM [95 % CI] | " if success else "") + "P(swfp > method) [95 % CI] | early dip | "
             "wall h/run |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | " + ("---: | " if success else "") + "---: | ---: | ---: |"]
    for r in rows:
        p = "—" if np.isnan(r["p_swfp_better"]) else f"{r['p_swfp_better']:.2f} {bracket(r['p_low'], r['p_high'], 2)}"
        method = r["algorithm"] + ("" if r["grid"] == str(results) else "*")
        rate = (f"{r['success_after']:.2f} {bracket(r['success_low'], r['success_high'], 2)} | "
                if "success_after" in r else "— | ") if success else ""
        lines.append(f"| {r['task']} | {method} | {r['seeds']} | {r['return_before']:.1f} | "
                     f"{r['return_after']:.1f} | {r['iqm_after']:.1f} {bracket(r['iqm_low'], r['iqm_high'], 1)} | "
                     f"{r['det_iqm_after']:.1f} {bracket(r['det_iqm_low'], r['det_iqm_high'], 1)} | {rate}{p} | "
                     f"{r['early_dip']:.1f} | {r['wall_hours']:.2f} |")
    return "\n".join(lines) + "\n"


# what the learning-curve plots show, one row of panels each: the return, and the success rate where a task
# reports one (OGBench's cubes; each run's eval.csv then has the column)
CURVE_QUANTITIES = (("return_mean", "return"), ("success_rate", "success rate"))


def curves(trials: dict[tuple[str, str], list[dict]],
           column: str = "return_mean") -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """``(task, algo) -> (steps, values (seeds, steps))`` of one ``eval.csv`` column on the evaluations all
    seeds share (:func:`shared_evaluations`); a pair whose evaluations lack the column (a task without
    success) is left out."""
    out = {}
    for key, runs in trials.items():
        if not all(column in r for tr in runs for r in tr["history"]):
            continue
        steps, rows = shared_evaluations([tr["history"] for tr in runs])
        values = np.array([[history[i][column] for i in indices] for history, indices in
                           zip((tr["history"] for tr in runs), rows)]).reshape(len(runs), len(steps))
        out[key] = (steps, values)
    return out


def shared_evaluations(histories: list[list[dict]]) -> tuple[np.ndarray, list[list[int]]]:
    """The evaluations every run made, as the first run's steps and, per run, the row of each.

    Runs of one grid evaluate every ``eval_every`` env steps, but a run that acts in chunks of H actions
    reaches an evaluation step up to H − 1 steps late, by an amount that differs from seed to seed
    (2000, 2002, 2003 on OGBench's cubes). A run's evaluation matches the first run's at step s where it
    is the nearest to s and closer than half the smallest spacing of the first run's evaluations; a step
    that some run has no match for is left out."""
    steps = [np.array([int(r["step"]) for r in history]) for history in histories]
    reference = np.unique(steps[0])
    tolerance = np.diff(reference).min() / 2 if len(reference) > 1 else 1
    shared, rows = [], [[] for _ in histories]
    for step in reference:
        nearest = [int(np.abs(run - step).argmin()) if len(run) else -1 for run in steps]
        if all(i >= 0 and abs(run[i] - step) < tolerance for run, i in zip(steps, nearest)):
            shared.append(int(step))
            for row, i in zip(rows, nearest):
                row.append(i)
    return np.array(shared, dtype=int), rows


def plot(trials, rows: list[dict], results: Path) -> None:
    """``learning_curves.png`` (mean ± 95 % CI over seeds), ``sample_efficiency.png`` (IQM with its bootstrap
    interval) and ``final_iqm.png``: one column of panels per task, a second row with the success rate
    where any task reports one (its panels stay empty for tasks that do not)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for t, _ in trials})
    quantities = [(name, series) for column, name in CURVE_QUANTITIES if (series := curves(trials, column))]

    for name, statistic in (("learning_curves.png", "mean"), ("sample_efficiency.png", "iqm")):
        fig, axes = plt.subplots(len(quantities), len(tasks), figsize=(5.5 * len(tasks), 4 * len(quantities)),
                                 squeeze=False)
        for axes_row, (quantity, series) in zip(axes, quantities):
            for ax, task in zip(axes_row, tasks):
                drawn = sorted(((algo, values) for (t, algo), values in series.items() if t == task),
                               key=lambda pair: pair[0])
                if not drawn:
                    ax.set_axis_off()
                    continue
                for algo, (steps, values) in drawn:
                    if statistic == "mean":
                        centre = values.mean(0)
                        half = (1.96 * values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1
                                else 0 * centre)
                        low, high = centre - half, centre + half
                    else:
                        points = [iqm_interval({"m": values[:, [i]]}) for i in range(len(steps))]
                        centre = np.array([p[0]["m"] for p in points])
                        low = np.array([p[1]["m"][0] for p in points])
                        high = np.array([p[1]["m"][1] for p in points])
                    ax.plot(steps, centre, label=algo)
                    ax.fill_between(steps, low, high, alpha=0.2)
                ax.set_title(task)
                label_steps(ax, "environment steps")
                ax.set_ylabel(f"{quantity} (mean ± 95 % CI)" if statistic == "mean"
                              else f"IQM {quantity} [95 % bootstrap CI]")
                ax.legend(fontsize=8)
        save_figure(fig, results / name)

    bars = [("iqm", "return")] + ([("success", "success rate")] if any("success_after" in r for r in rows) else [])
    fig, axes = plt.subplots(len(bars), len(tasks), figsize=(5.5 * len(tasks), 4 * len(bars)), squeeze=False)
    for axes_row, (key, quantity) in zip(axes, bars):
        for ax, task in zip(axes_row, tasks):
            task_rows = [r for r in rows if r["task"] == task and f"{key}_after" in r]
            if not task_rows:
                ax.set_axis_off()
                continue
            centre = np.array([r[f"{key}_after"] for r in task_rows])
            low, high = np.array([r[f"{key}_low"] for r in task_rows]), np.array([r[f"{key}_high"] for r in task_rows])
            x = np.arange(len(task_rows))
            ax.bar(x, centre, yerr=np.nan_to_num([centre - low, high - centre]), capsize=4)
            ax.set_xticks(x, [r["algorithm"] for r in task_rows], rotation=30)
            ax.set_title(f"{task}: final IQM {quantity} [95 % CI]")
    save_figure(fig, results / "final_iqm.png")


def write_report(results: Path, beside: list[Path] = (), rescore_episodes: int | None = None,
                 rescore_seed: int = RESCORE_SEED) -> list[dict]:
    """Write the report; with ``rescore_episodes``, also re-score every finished trial's final policy."""
    from swfp.bench import write_rows_csv

    results = Path(results)
    trials = load_trials(results, [Path(b) for b in beside])
    rows, per_trial = aggregate(trials), trial_rows(trials)
    write_rows_csv(results / "report.csv", rows)
    write_rows_csv(results / "report_trials.csv", per_trial)
    unfinished = unfinished_trials(results)
    note = f"\nNot finished, so not in these tables: {'; '.join(unfinished)}.\n" if unfinished else ""
    rescored = ""
    if rescore_episodes is not None:
        rescore_rows = rescore_trials(trials, rescore_episodes, rescore_seed)
        write_rows_csv(results / "rescore.csv", rescore_rows)
        rescored = "\n" + rescore_markdown(trials, rescore_rows, rescore_episodes, rescore_seed)
    atomic_write_text(results / "report.md", markdown(rows, results) + "\n" + trial_markdown(per_trial) + note
                      + rescored)
    plot(trials, rows, results)
    return rows


def rescore_trials(trials: dict[tuple[str, str], list[dict]], episodes: int, seed: int) -> list[dict]:
    """Re-score every trial that kept its final policy (``trial["rescore"]``, :func:`swfp.rescore.rescore`);
    one row per trial, beside its last evaluation during training."""
    from swfp.logger import make_progress

    todo = [trial for runs in trials.values() for trial in runs]
    with make_progress() as progress:
        bar = progress.add_task(f"re-scoring on {episodes} episodes", total=len(todo), status="")
        for trial in todo:
            progress.update(bar, status=str(trial["run_dir"]))
            trial["rescore"] = rescore(trial["run_dir"], episodes, seed)
            progress.advance(bar)
    rows = []
    for (task, algo), runs in sorted(trials.items()):
        for trial in sorted((t for t in runs if t["rescore"]), key=lambda t: t["seed"]):
            score = trial["rescore"]
            rows.append({"task": task, "algorithm": algo, "seed": trial["seed"], "grid": trial["grid"],
                         "return_after": trial["return_after"], "rescored": score["return_mean"],
                         "rescored_ci": score["return_ci"],
                         "det_return_after": trial.get("det_return_after", float("nan")),
                         "det_rescored": score["det_return_mean"], "det_rescored_ci": score["det_return_ci"],
                         "episodes": episodes, "episode_seed": seed})
    if not rows:
        raise FileNotFoundError("no finished trial kept its final policy (policy.* or actor.* beside its "
                                "summary.json), so none can be re-scored; grids keep them since issue 42")
    return rows


def rescore_markdown(trials: dict[tuple[str, str], list[dict]], rows: list[dict], episodes: int, seed: int) -> str:
    """The re-scored IQM per task and method (the training's, on the same trials, beside it) and every trial."""
    kept = {key: [t for t in runs if t["rescore"]] for key, runs in trials.items()}
    kept = {key: runs for key, runs in kept.items() if runs}
    trained = aggregate(kept)
    rescored = aggregate({key: [{**t, "return_after": t["rescore"]["return_mean"],
                                 "det_return_after": t["rescore"]["det_return_mean"]} for t in runs]
                          for key, runs in kept.items()})
    lines = [f"Re-scored: each finished trial's final policy on the same {episodes} episodes (episode seeds {seed}–"
             f"{seed + episodes - 1}, policy noise seed {seed}; `swfp eval RUN --episodes {episodes} --seed {seed}` "
             "gives any of them), beside the last evaluation each run wrote during training (on its own episodes); "
             "IQM over seeds with 95 % stratified bootstrap intervals", "",
             "| task | method | seeds | training: after IQM | re-scored IQM [95 % CI] | training: det. after IQM | "
             "re-scored det. IQM [95 % CI] | re-scored P(swfp > method) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for before, after in zip(trained, rescored):
        p = "—" if np.isnan(after["p_swfp_better"]) else f"{after['p_swfp_better']:.2f}"
        lines.append(f"| {after['task']} | {after['algorithm']} | {after['seeds']} | {before['iqm_after']:.1f} | "
                     f"{after['iqm_after']:.1f} {bracket(after['iqm_low'], after['iqm_high'], 1)} | "
                     f"{before['det_iqm_after']:.1f} | {after['det_iqm_after']:.1f} "
                     f"{bracket(after['det_iqm_low'], after['det_iqm_high'], 1)} | {p} |")
    lines += ["", "| task | method | seed | training: after | re-scored (± 95 % CI) | training: det. after | "
                  "re-scored det. (± 95 % CI) |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['seed']} | {r['return_after']:.1f} | {r['rescored']:.1f} "
                     f"± {r['rescored_ci']:.1f} | {r['det_return_after']:.1f} | {r['det_rescored']:.1f} ± "
                     f"{r['det_rescored_ci']:.1f} |")
    missing = sorted(f"{Path(t['run_dir']).relative_to(t['grid']).as_posix()}" for runs in trials.values()
                     for t in runs if not t["rescore"])
    if missing:
        lines += ["", f"Kept no final policy, so not re-scored: {'; '.join(missing)}."]
    return "\n".join(lines) + "\n"


def config_differences(configs: dict[str, dict]) -> dict[str, dict[str, object]]:
    """``label -> {dotted.key: value}`` for the settings (algorithm, config and derived fields of each run's
    ``config.json``; the seed too) whose values are not the same in every run."""
    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    flattened = {label: dict(flat({k: v for k, v in c.items() if k != "run"} | {"seed": c.get("run", {}).get("seed")}))
                 for label, c in configs.items()}
    keys = sorted(set().union(*flattened.values()))
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flattened.values()}) > 1]
    return {label: {k: f.get(k) for k in varying} for label, f in flattened.items()}


# the state of each run at the last evaluation the runs share, where its eval.csv has the column (SWFP's
# blocks, step size and entropy; the wall time for every method): what an ablation changed besides the return
COMPARE_STATE = (("wall_time", "wall time (s)", "{:.0f}"), ("entropy", "entropy", "{:.2f}"),
                 ("alpha", "α", "{:.2g}"), ("tau", "τ", "{:.3f}"), ("blocks_accepted", "blocks accepted", "{:.0f}"),
                 ("blocks_rejected", "blocks rejected", "{:.0f}"), ("w2_upper", "W₂ of the last blocks", "{:.3f}"),
                 ("heldout_delta_free_energy", "held-out ΔF of the last blocks", "{:+.4f}"),
                 ("accepted_w2_sum", "ΣW₂ of the accepted blocks", "{:.2f}"))


def accepted_w2_sum(run: Path, step: int) -> float:
    """How far an SWFP run has moved its policy by env step ``step``: the sum of the W₂ bounds of the blocks
    its gate accepted (``blocks.csv``; DESIGN.md §3: the return followed this sum); NaN without blocks."""
    path = Path(run) / "blocks.csv"
    if not path.is_file():
        return float("nan")
    return float(sum(r["w2_upper"] for r in read_csv(path) if r["step"] <= step and r["accepted"] == 1))


def state_table(states: dict[str, dict], step: int) -> list[str]:
    """Markdown rows of :data:`COMPARE_STATE`, one column per run (``label -> {column: value}`` at ``step``,
    "—" where a run lacks the value); a quantity no run logs is left out."""
    lines = []
    for column, name, form in COMPARE_STATE:
        values = {label: state.get(column) for label, state in states.items()}
        shown = {label: form.format(v) if isinstance(v, float) and not np.isnan(v) else "—"
                 for label, v in values.items()}
        if any(v != "—" for v in shown.values()):
            lines.append(f"| {name} | " + " | ".join(shown.values()) + " |")
    if not lines:
        return []
    return ["", f"Each run at env step {step:,}:", "", "| | " + " | ".join(states) + " |",
            "| --- |" + " ---: |" * len(states), *lines]


def compare_runs(runs: dict[str, Path], out: Path, last: int = 3) -> list[dict]:
    """Returns of single runs (``label -> run directory``) at the evaluation steps they all share, stochastic
    and deterministic, and the mean of the ``last`` shared evaluations, then each run's state at the last
    shared step (:func:`state_table`); a probe of one setting needs no finished grid. Writes ``compare.md``,
    ``compare.csv``, ``compare.png`` and ``meta.json`` into ``out``."""
    from swfp.bench import write_rows_csv

    if len(runs) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(runs)}")
    histories, configs = {}, {}
    for label, run in runs.items():
        if not (Path(run) / "eval.csv").is_file():
            raise FileNotFoundError(f"{run} has no eval.csv: is it a `swfp finetune` run directory?")
        if (Path(run) / "meta.json").is_file() and read_json(Path(run) / "meta.json").get("kind") == "pretrain":
            raise ValueError(f"{run} is a pre-training run, evaluated at gradient steps, not env steps; compare "
                             "fine-tuning runs of any method, and put the pre-trained flow on their schedule with "
                             "`swfp finetune PRETRAINED --algo bc`")
        histories[label] = {int(r["step"]): r for r in read_csv(Path(run) / "eval.csv")}
        configs[label] = read_json(Path(run) / "config.json")
    steps = sorted(set.intersection(*[set(h) for h in histories.values()]))
    if not steps:
        raise ValueError("the runs share no evaluation step; evaluate them on the same schedule (--eval-every)")
    rows = [{"step": step, **{f"{label} {kind}": histories[label][step][f"{prefix}return_mean"]
                              for label in runs for kind, prefix in (("stochastic", ""), ("deterministic", "det_"))}}
            for step in steps]
    tail = rows[-last:]
    summary = {"step": f"mean of the last {len(tail)}",
               **{k: float(np.mean([r[k] for r in tail])) for k in rows[0] if k != "step"}}
    out = Path(out)
    write_run_metadata(out, {"runs": {label: str(run) for label, run in runs.items()}, "last": last}, seed=0,
                       kind="bench-compare")
    write_rows_csv(out / "compare.csv", rows + [summary])
    differences = config_differences(configs)
    lines = ["Runs compared, and the settings in which they differ:", ""]
    lines += [f"- **{label}**: `{run}`" + ("; " + ", ".join(f"`{k}` = {json.dumps(v)}" for k, v in
                                                              differences[label].items()) if differences[label] else "")
              for label, run in runs.items()]
    lines += ["", "Return at each evaluation the runs share, stochastic (deterministic):", "",
              "| env steps | " + " | ".join(runs) + " |", "| ---: |" + " ---: |" * len(runs)]
    for row in rows + [summary]:
        step = f"{row['step']:,}" if isinstance(row["step"], int) else row["step"]
        lines.append(f"| {step} | " + " | ".join(f"{row[f'{label} stochastic']:.1f} ({row[f'{label} deterministic']:.1f})"
                                                 for label in runs) + " |")
    lines += state_table({label: {**histories[label][steps[-1]],
                                  "accepted_w2_sum": accepted_w2_sum(run, steps[-1])}
                         for label, run in runs.items()}, steps[-1])
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    plot_comparison(rows, list(runs), out / "compare.png")
    return rows + [summary]


def plot_comparison(rows: list[dict], labels: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in rows]
    for ax, kind in zip(axes, ("stochastic", "deterministic")):
        for label in labels:
            ax.plot(steps, [r[f"{label} {kind}"] for r in rows], marker="o", markersize=3, label=label)
        ax.set_title(f"{kind} return")
        label_steps(ax, "environment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
