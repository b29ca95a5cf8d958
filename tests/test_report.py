"""``swfp bench report`` on synthetic result files whose IQM, intervals and improvement probabilities
are known in closed form."""

import json
import subprocess
import sys

import numpy as np
import pytest

from swfp.report import write_report

TASK = "Hopper-v5"


def write_trial(root, algo: str, seed: int, before: float, after: float, dip: float = 0.0, steps: int = 1000,
                det_after: float | None = None, task: str = TASK, success_after: float | None = None):
    run = root / "runs" / task / algo / f"seed{seed}"
    run.mkdir(parents=True)
    history = [(0, before), (steps // 5, before - dip), (steps // 2, (before + after) / 2), (steps, after)]
    if success_after is None:
        run.joinpath("eval.csv").write_text("step,wall_time,return_mean\n" + "".join(
            f"{s},{i},{r}\n" for i, (s, r) in enumerate(history)))
    else:  # a task that reports success: the rate climbs from 0 to success_after with the same points
        rates = [0.0, 0.0, success_after / 2, success_after]
        run.joinpath("eval.csv").write_text("step,wall_time,return_mean,success_rate\n" + "".join(
            f"{s},{i},{r},{rate}\n" for i, ((s, r), rate) in enumerate(zip(history, rates))))
    status = {"critic_seconds": 1.5, "replay_seconds": 0.1, "update_seconds": 1.8}
    if algo == "swfp":
        status = {**status, "block_seconds": 0.3, "blocks": 2, "blocks_accepted": 5, "blocks_rejected": 1,
                  "blocks_compactions": 1}
    success = {} if success_after is None else {"success_rate_before": 0.0, "success_rate_after": success_after}
    run.joinpath("summary.json").write_text(json.dumps({
        "algorithm": algo, "task": task, "env_steps": steps, "return_before": before, "return_after": after,
        "det_return_after": after + 1.0 if det_after is None else det_after, **success,
        "seconds_per_env_step": {"collect": 0.001, "train": 0.002, "eval": 0.0}, "status": status}))


@pytest.fixture
def results(tmp_path):
    # swfp: finals 0, 10, 20, 30 -> IQM = mean(10, 20) = 15; every seed beats bc (finals -1 … -4).
    for seed, after in enumerate([0.0, 10.0, 20.0, 30.0]):
        write_trial(tmp_path, "swfp", seed, before=-5.0, after=after, dip=2.0 + seed)
    for seed in range(4):
        write_trial(tmp_path, "bc", seed, before=-5.0, after=-1.0 - seed)
    # constant: every seed ends at 7 -> IQM 7 with a zero-width interval; P(swfp > constant) = 10/16 + 0
    for seed in range(4):
        write_trial(tmp_path, "constant", seed, before=-5.0, after=7.0)
    return tmp_path


def test_report_statistics_match_closed_form(results):
    rows = {r["algorithm"]: r for r in write_report(results)}
    swfp, bc, constant = rows["swfp"], rows["bc"], rows["constant"]
    assert swfp["iqm_after"] == pytest.approx(15.0) and swfp["seeds"] == 4
    assert 0.0 <= swfp["iqm_low"] <= 15.0 <= swfp["iqm_high"] <= 30.0
    assert constant["iqm_after"] == pytest.approx(7.0)
    assert constant["iqm_low"] == pytest.approx(7.0) and constant["iqm_high"] == pytest.approx(7.0)
    assert bc["p_swfp_better"] == pytest.approx(1.0) and bc["p_low"] == pytest.approx(1.0)
    # swfp finals {0, 10, 20, 30} vs 7: 3 of 4 above -> P = 0.75
    assert constant["p_swfp_better"] == pytest.approx(0.75)
    assert np.isnan(swfp["p_swfp_better"])
    # early dip: the step-200 point (in the first quarter) falls 2, 3, 4, 5 below the start -> mean 3.5
    assert swfp["early_dip"] == pytest.approx(3.5) and bc["early_dip"] == 0.0
    assert swfp["wall_hours"] == pytest.approx(0.003 * 1000 / 3600)
    for name in ("report.md", "report.csv", "learning_curves.png", "final_iqm.png", "sample_efficiency.png"):
        assert (results / name).stat().st_size > 0, name
    assert "| Hopper-v5 | swfp | 4 |" in (results / "report.md").read_text()
    # deterministic finals are the stochastic ones + 1 here: the same IQM shifted by 1
    assert swfp["det_iqm_after"] == pytest.approx(16.0) and constant["det_iqm_low"] == pytest.approx(8.0)
    assert "| 15.0 [" in (results / "report.md").read_text() and "| 16.0 [" in (results / "report.md").read_text()


def test_report_puts_another_grids_methods_beside_its_own(results, tmp_path_factory):
    """``--beside GRID``: the (task, method) pairs this grid lacks come from the other grid, marked *; a pair
    both hold is this grid's."""
    other = tmp_path_factory.mktemp("other")
    for seed in range(3):
        write_trial(other, "swfp", seed, before=-5.0, after=-100.0)  # shadowed by this grid's swfp
        write_trial(other, "dsrl", seed, before=-5.0, after=12.0, det_after=2.0)
    rows = {r["algorithm"]: r for r in write_report(results, [other])}
    assert rows["swfp"]["iqm_after"] == pytest.approx(15.0) and rows["swfp"]["grid"] == str(results)
    assert rows["dsrl"]["iqm_after"] == pytest.approx(12.0) and rows["dsrl"]["det_iqm_after"] == pytest.approx(2.0)
    assert rows["dsrl"]["p_swfp_better"] == pytest.approx(0.5)  # finals 0, 10, 20, 30 against 12
    text = (results / "report.md").read_text()
    assert "| Hopper-v5 | dsrl* | 3 |" in text and str(other) in text
    cli = subprocess.run([sys.executable, "-m", "swfp.cli", "bench", "report", str(results), "--beside",
                          str(tmp_path_factory.mktemp("empty"))], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "summary.json" in cli.stderr


def test_report_lists_every_trial_with_its_time_split(results):
    write_report(results)
    rows = [r.split(",") for r in (results / "report_trials.csv").read_text().strip().splitlines()]
    header, rows = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    assert len(rows) == 12 and "critic_ms" in header
    swfp = [r for r in rows if r["algorithm"] == "swfp"]
    bc = next(r for r in rows if r["algorithm"] == "bc")
    # 1000 env steps: critic 1.5 s -> 1.5 ms/step; SWFP's actor is its block time (0.3 s), another
    # method's is its update time less critic and replay (1.8 - 1.5 - 0.1 = 0.2 s).
    assert float(swfp[0]["critic_ms"]) == pytest.approx(1.5) and float(swfp[0]["actor_ms"]) == pytest.approx(0.3)
    assert float(bc["actor_ms"]) == pytest.approx(0.2) and float(bc["ms_per_env_step"]) == pytest.approx(3.0)
    assert [float(r["return_after"]) for r in swfp] == [0.0, 10.0, 20.0, 30.0]
    text = (results / "report.md").read_text()
    assert "| Hopper-v5 | swfp | seed2 | -5.0 | 20.0 |" in text and "5/1 (1)" in text


def test_report_names_the_trials_that_have_not_finished(results):
    stopped = results / "runs" / TASK / "swfp" / "seed9"
    stopped.mkdir()
    stopped.joinpath("eval.csv").write_text("step,wall_time,return_mean\n0,0,-5\n600,1,3\n")
    (results / "runs" / TASK / "bc" / "seed7").mkdir()
    rows = {r["algorithm"]: r for r in write_report(results)}
    assert rows["swfp"]["seeds"] == 4  # the unfinished trial is not aggregated
    report = (results / "report.md").read_text()
    assert (f"Not finished, so not in these tables: runs/{TASK}/bc/seed7 (no evaluation yet); "
            f"runs/{TASK}/swfp/seed9 (last evaluation at env step 600).") in report


def test_a_single_seed_gets_no_bootstrap_interval(results):
    write_trial(results, "lonely", 0, before=-5.0, after=12.0)
    rows = {r["algorithm"]: r for r in write_report(results)}
    lonely = rows["lonely"]
    assert lonely["iqm_after"] == pytest.approx(12.0) and np.isnan(lonely["iqm_low"]) and np.isnan(lonely["iqm_high"])
    # swfp finals {0, 10, 20, 30} vs 12: 2 of 4 above -> P = 0.5, but one seed of the other has no interval
    assert lonely["p_swfp_better"] == pytest.approx(0.5) and np.isnan(lonely["p_low"])
    assert "| Hopper-v5 | lonely | 1 | -5.0 | 12.0 | 12.0 [— 1 seed] | 13.0 [— 1 seed] | 0.50 [— 1 seed] |" in \
        (results / "report.md").read_text()
    assert not np.isnan(rows["swfp"]["iqm_low"])


def test_intervals_of_unchanged_trials_survive_a_regenerated_report(results):
    """A report regenerated with more trials beside a row gives that row the same bootstrap intervals."""
    # eight irregular finals: enough distinct resamples that an unseeded bootstrap moves the percentiles
    for seed, final in enumerate([3.1, 40.7, 5.3, 17.9, 11.2, 29.4, 8.8, 23.6]):
        write_trial(results, "spread", seed, before=-5.0, after=final)
    before = {r["algorithm"]: r for r in write_report(results)}
    for seed, after in enumerate([3.0, 40.0, 5.0]):
        write_trial(results, "newcomer", seed, before=-5.0, after=after)
    after = {r["algorithm"]: r for r in write_report(results)}
    for method in ("swfp", "bc", "constant", "spread"):
        for key in ("iqm_low", "iqm_high", "p_low", "p_high"):
            old, new = before[method][key], after[method][key]
            assert new == old or (np.isnan(old) and np.isnan(new)), (method, key)


def test_report_cli_without_results_says_what_it_expects(tmp_path):
    out = subprocess.run([sys.executable, "-m", "swfp.cli", "bench", "report", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "summary.json" in out.stderr


def write_probe(root, name: str, tau: float, returns: dict[int, tuple[float, float]], seed: int = 0,
                entropy: float | None = None):
    """A `swfp finetune` run directory as far as `bench compare` reads it: eval.csv and config.json; the
    wall time is 100 s per 10 env steps, and ``entropy`` (SWFP's, as its eval.csv logs it) the same at each."""
    run = root / name
    run.mkdir()
    run.joinpath("eval.csv").write_text("step,wall_time,return_mean,det_return_mean,entropy\n" + "".join(
        f"{s},{10 * s},{r},{d},{'' if entropy is None else entropy}\n" for s, (r, d) in returns.items()))
    run.joinpath("config.json").write_text(json.dumps({
        "algorithm": "swfp", "run": {"task": TASK, "seed": seed, "eval_every": 10},
        "config": {"tau": tau, "alpha": 0.01, "critic": {"gamma": 0.99}}, "block_every": 5}))
    return run


def test_compare_lines_up_runs_at_shared_steps_and_names_what_differs(tmp_path):
    default = write_probe(tmp_path, "default", 0.03, {0: (1, 2), 10: (3, 4), 20: (5, 6), 30: (7, 8)})
    larger = write_probe(tmp_path, "larger", 0.1, {0: (1, 2), 10: (13, 14), 20: (15, 16)},  # stopped early
                         entropy=-2.5)
    # SWFP's judged blocks: the accepted ones up to the last shared step (20) add up to W2 0.1 + 0.2
    larger.joinpath("blocks.csv").write_text("step,w2_upper,accepted\n5,0.1,1\n15,0.5,0\n20,0.2,1\n25,0.4,1\n")
    out = tmp_path / "cmp"
    from swfp.report import compare_runs
    rows = compare_runs({"default": default, "tau 0.1": larger}, out, last=2)
    assert [r["step"] for r in rows[:-1]] == [0, 10, 20]  # the steps both runs reached
    assert rows[-1]["default stochastic"] == 4.0 and rows[-1]["tau 0.1 deterministic"] == 15.0  # mean of the last 2
    text = (out / "compare.md").read_text()
    assert "`config.tau` = 0.1" in text and "`config.tau` = 0.03" in text and "alpha" not in text and "gamma" not in text
    assert "| 20 | 5.0 (6.0) | 15.0 (16.0) |" in text
    # each run's state at the last shared step: a blank cell is "—", a quantity no run logs has no row
    assert "Each run at env step 20:" in text and "| wall time (s) | 200 | 200 |" in text
    assert "| entropy | — | -2.50 |" in text and "| τ |" not in text
    assert "| ΣW₂ of the accepted blocks | — | 0.30 |" in text
    assert (out / "compare.png").is_file() and (out / "compare.csv").is_file()
    assert json.loads((out / "meta.json").read_text())["kind"] == "bench-compare"

    other_seed = write_probe(tmp_path, "seed1", 0.03, {5: (0, 0)}, seed=1)
    with pytest.raises(ValueError, match="share no evaluation step"):
        compare_runs({"default": default, "seed1": other_seed}, tmp_path / "none")
    cli = subprocess.run([sys.executable, "-m", "swfp.cli", "bench", "compare", str(default), str(larger), "--labels",
                          "a", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "one distinct label per run" in cli.stderr

    pretraining = write_probe(tmp_path, "bc", 0.03, {0: (1, 2), 10: (3, 4)})  # its steps are gradient steps
    pretraining.joinpath("meta.json").write_text(json.dumps({"kind": "pretrain"}))
    with pytest.raises(ValueError, match="is a pre-training run.*--algo bc"):
        compare_runs({"default": default, "bc": pretraining}, tmp_path / "mixed")


def test_env_step_axes_are_labelled_in_thousands():
    """Full step counts ("125000") run into each other on a 200k axis; the plots label them "125k"."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from swfp.logger import label_steps

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([0, 200_000], [0, 1])
    label_steps(ax, "environment steps")
    fig.canvas.draw()
    labels = {t.get_text() for t in ax.get_xticklabels()}
    plt.close(fig)
    assert {"0", "100k", "200k"} <= labels and not any(len(t) > 5 for t in labels), labels


def test_a_task_that_reports_success_gets_its_success_rate_beside_the_return(tmp_path):
    """OGBench's cube tasks report success: the report adds the success rate's IQM (and each trial's rate);
    a report of tasks without success keeps its columns (the tests above)."""
    for seed, rate in enumerate([0.2, 0.4, 0.6, 0.8]):
        write_trial(tmp_path, "swfp", seed, before=-190.0, after=-120.0, task="cube-single-task2", success_after=rate)
        write_trial(tmp_path, "sac", seed, before=-200.0, after=-200.0, task="cube-single-task2", success_after=0.0)
    rows = {r["algorithm"]: r for r in write_report(tmp_path)}
    assert rows["swfp"]["success_after"] == pytest.approx(0.5)  # IQM of 0.2 … 0.8: mean of 0.4 and 0.6
    assert rows["sac"]["success_after"] == 0.0 and rows["sac"]["success_low"] == rows["sac"]["success_high"] == 0.0
    text = (tmp_path / "report.md").read_text()
    assert "success after IQM [95 % CI]" in text and "| 0.50 [" in text and "| success after |" in text


def test_plots_gain_a_success_row_where_a_task_reports_success(tmp_path):
    """The learning curves and final bars of a grid with a cube task get a second row of panels, the
    success rate (what the issue asks of every place a return is shown); a locomotion-only grid has one."""
    from matplotlib.image import imread

    from swfp.report import curves, load_trials

    locomotion, mixed = tmp_path / "locomotion", tmp_path / "mixed"
    for seed in range(3):
        write_trial(locomotion, "swfp", seed, before=-5.0, after=10.0)
        write_trial(mixed, "swfp", seed, before=-5.0, after=10.0)
        write_trial(mixed, "swfp", seed, before=-190.0, after=-120.0, task="cube-single-task2",
                    success_after=0.3 * seed)
    write_report(locomotion), write_report(mixed)
    for name in ("learning_curves.png", "sample_efficiency.png", "final_iqm.png"):
        one, two = imread(locomotion / name), imread(mixed / name)
        # 2 x 2 panels against 1 x 1 (the tight bounding box trims a few pixels)
        assert two.shape[0] / one.shape[0] == pytest.approx(2, rel=0.1), name
        assert two.shape[1] / one.shape[1] == pytest.approx(2, rel=0.1), name
    success = curves(load_trials(mixed), "success_rate")
    assert list(success) == [("cube-single-task2", "swfp")]  # Hopper reports no success: no curve for it
    steps, rates = success["cube-single-task2", "swfp"]
    assert steps.tolist() == [0, 200, 500, 1000] and rates[:, -1].tolist() == pytest.approx([0.0, 0.3, 0.6])


def test_learning_curves_line_up_evaluations_that_chunks_made_a_few_steps_late(tmp_path):
    """A run acting in chunks of 5 reaches its evaluation steps up to 4 steps late, differently per seed:
    its curves keep every evaluation (matched to the nearest), not only the steps all seeds hit exactly."""
    from swfp.report import curves, load_trials, shared_evaluations

    for seed, late in enumerate([0, 2, 3]):
        write_trial(tmp_path, "swfp", seed, before=-190.0, after=-120.0, task="cube-single-task2",
                    success_after=0.3 * (seed + 1))
        run = tmp_path / "runs" / "cube-single-task2" / "swfp" / f"seed{seed}" / "eval.csv"
        lines = run.read_text().splitlines()
        shifted = [lines[0], lines[1]] + [f"{int(line.split(',')[0]) + late},{line.split(',', 1)[1]}"
                                          for line in lines[2:]]
        run.write_text("\n".join(shifted) + "\n")
    steps, rates = curves(load_trials(tmp_path), "success_rate")["cube-single-task2", "swfp"]
    assert steps.tolist() == [0, 200, 500, 1000] and rates[:, -1].tolist() == pytest.approx([0.3, 0.6, 0.9])
    # an evaluation that one run lacks (nothing within half the spacing) is left out, not matched far away
    steps, rows = shared_evaluations([[{"step": 0}, {"step": 100}, {"step": 200}], [{"step": 0}, {"step": 199}]])
    assert steps.tolist() == [0, 200] and rows == [[0, 2], [0, 1]]
