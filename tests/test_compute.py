"""``swfp bench compute`` and ``swfp bench loop`` at toy sizes: what they write and the figures that do
not depend on timing (memory, the inference rows' chain lengths, the phase split's bookkeeping)."""

from __future__ import annotations

import json
import math
import time

import pytest

from swfp.cli import main
from swfp.compute import ComputeConfig, LoopConfig, bench_compute, bench_loop
from swfp.logger import read_csv

BANDIT = "swfp/QuadraticBandit-v0"


def test_bench_compute_bptt_memory_grows_with_k_and_the_block_step_does_not(tmp_path):
    config = ComputeConfig(task=BANDIT, euler_steps=(2, 16), block_counts=(0, 3, 9), inference_batches=(1, 4),
                           max_blocks=4, batch_size=64, repeats=2, warmup=1)
    result = bench_compute(config, tmp_path, device="cpu")
    small, large = result["updates"]
    assert [small["euler_steps"], large["euler_steps"]] == [2, 16]
    # bptt keeps every Euler step's activations for its backward pass; a block's graph is its own.
    assert large["bptt_memory_mb"] > 1.5 * small["bptt_memory_mb"]  # 8× the Euler steps (plus the critic's share)
    assert large["swfp_block_memory_mb"] == pytest.approx(small["swfp_block_memory_mb"])
    assert large["bptt_over_swfp_memory"] > small["bptt_over_swfp_memory"]
    chain = result["chain"]  # the live block's step against the blocks already in the chain
    assert [r["earlier_blocks"] for r in chain] == [0, 3, 9]
    assert len({r["swfp_block_memory_mb"] for r in chain}) == 1
    rows = result["inference"]
    assert [r["blocks"] for r in rows] == [0, 3, 9]
    assert all(r[f"{label}_batch{b}_ms"] > 0 for r in rows for label in ("no_compaction", "compaction") for b in (1, 4))
    assert rows[0]["no_compaction_batch1_over_0_blocks"] == 1.0
    for name in ("compute_updates.csv", "compute_chain.csv", "compute_inference.csv", "compute.md", "compute_updates.png",
                 "compute_inference.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    assert len(read_csv(tmp_path / "compute_updates.csv")) == 2
    assert "| 16 |" in (tmp_path / "compute.md").read_text()
    # the device the figures were measured on: in every CSV row, in the tables' heading and in meta.json
    for name in ("compute_updates.csv", "compute_chain.csv", "compute_inference.csv"):
        assert {row["device"] for row in read_csv(tmp_path / name)} == {"cpu"}, name
    assert "on cpu;" in (tmp_path / "compute.md").read_text()
    assert json.loads((tmp_path / "meta.json").read_text())["device"] == "cpu"


def test_bench_compute_rejects_bad_settings():
    with pytest.raises(ValueError, match="euler_steps"):
        ComputeConfig(euler_steps=(0, 4))
    with pytest.raises(Exception, match="Nope-v0"):
        ComputeConfig(task="Nope-v0")


def test_bench_loop_splits_a_real_run_and_measures_the_floor(tmp_path, bandit_bc):
    settings = {"block_grad_steps": "20", "pool_size": "512", "heldout_states": "128", "critic_warmup_steps": "20",
                "compaction_steps": "20", "batch_size": "64", "block_batch_size": "16"}
    config = LoopConfig(pretrained=str(bandit_bc / "bc"), algo="swfp", env_steps=300, budget=600, repeats=3,
                        settings=settings)
    started = time.perf_counter()
    rows = {r["phase"]: r for r in bench_loop(config, tmp_path, device="cpu")}
    elapsed = time.perf_counter() - started
    assert set(rows) == {"collect", "critic", "actor", "transfer", "eval", "log", "other", "total"}
    assert {r["device"] for r in rows.values()} == {"cpu"}
    assert {r["device"] for r in read_csv(tmp_path / "loop.csv")} == {"cpu"}
    assert "on cpu;" in (tmp_path / "loop.md").read_text()
    assert rows["transfer"]["in_loop_ms"] == 0.0  # on the CPU a "copy" to the device is the same memory
    assert rows["total"]["in_loop_ms"] == pytest.approx(sum(r["in_loop_ms"] for p, r in rows.items() if p != "total"))
    # no second counted twice: the live block's steps run inside the learner's update, and counting them in the
    # actor's share on top of the update once made "other" negative (-8 ms of 28 on Hopper-v5)
    assert rows["other"]["in_loop_ms"] >= 0
    for phase in ("collect", "critic", "actor"):
        assert rows[phase]["in_loop_ms"] > 0 and rows[phase]["alone_ms"] > 0, phase
    assert math.isnan(rows["eval"]["alone_ms"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The schedule is the budget's: blocks every 600 / 20 = 30 env steps, evaluations every 30.
    assert summary["status"]["blocks_accepted"] + summary["status"]["blocks_rejected"] == 300 // 30
    assert len(read_csv(tmp_path / "run" / "eval.csv")) == 300 // 30 + 1
    # Every second of the loop lands in one phase: the phases add up to the run's wall time, which
    # cannot exceed the time the whole benchmark took.
    per_step = summary["seconds_per_env_step"]
    assert set(per_step) == {"collect", "train", "eval", "log", "checkpoint", "transfer"}
    assert sum(per_step.values()) * 300 == pytest.approx(summary["wall_seconds"], abs=0.1)
    assert 0 < summary["wall_seconds"] <= elapsed
    assert (tmp_path / "loop.png").is_file() and "measured alone" in (tmp_path / "loop.md").read_text()


def test_bench_loop_refuses_on_policy_methods_and_short_budgets(bandit_bc):
    with pytest.raises(ValueError, match="off-policy"):
        LoopConfig(pretrained=str(bandit_bc / "bc"), algo="reinflow")
    with pytest.raises(ValueError, match="budget"):
        LoopConfig(pretrained=str(bandit_bc / "bc"), env_steps=1000, budget=500)
    assert main(["bench", "loop", str(bandit_bc / "bc"), "--algo", "bc"]) == 2


def test_bench_readme_regenerates_the_experiment_log_from_result_files(tmp_path):
    from swfp.readme import BEGIN, END, update_log

    results = tmp_path / "benchmarks" / "results"
    bench_compute(ComputeConfig(task=BANDIT, euler_steps=(2,), block_counts=(0,), inference_batches=(1,),
                                batch_size=16, repeats=1, warmup=0), results / "compute")
    (results / "sweep").mkdir()
    (results / "sweep" / "README.md").write_text("# A curated sweep\n\nTau 0.03 won.\n\n## Curves\n\n"
                                                 "![curve](run/curve.png) and [paper](https://arxiv.org)\n")
    (results / "grid").mkdir()  # a grid continued by a second driver: both commands, in order
    first = {"command": ["swfp", "bench", "grid", "--seeds", "0"], "git_commit": "a" * 40, "created": "2026-11-25T1"}
    (results / "grid" / "grid.json").write_text(json.dumps(
        {"command": ["swfp", "bench", "grid", "--seeds", "1"], "git_commit": "b" * 40, "earlier_invocations": [first]}))
    (results / "grid" / "report.md").write_text("| method | IQM |\n| --- | ---: |\n| swfp | 1.0 |\n")
    for member in ("Hopper-seed0", "Hopper-seed1"):  # a group of measurements, one per run: a subsection each
        (results / "group" / member).mkdir(parents=True)
        (results / "group" / member / "meta.json").write_text(json.dumps({"command": ["swfp", "bench", member]}))
        (results / "group" / member / "m.md").write_text(f"figure of {member}\n")
    page = tmp_path / "docs" / "experiment-log.md"
    page.parent.mkdir()
    page.write_text(f"# Experiment log\n\nintro\n\n{BEGIN}\nstale figures\n{END}\n\n## After\n")
    update_log(page, results, "results")
    text = page.read_text()
    assert ("Made by `swfp bench grid --seeds 0` (commit `aaaaaaaaaaaa`, 2026-11-25), then "
            "`swfp bench grid --seeds 1` (commit `bbbbbbbbbbbb`); files in [results/grid/](results/grid/report.md)"
            ) in text and "| swfp | 1.0 |" in text
    assert "stale figures" not in text and text.startswith("# Experiment log\n\nintro") and text.endswith("## After\n")
    table = (results / "compute" / "compute.md").read_text().strip()
    assert table in text  # the measured table itself, not a paraphrase
    assert "(commit `" in text and "swfp " in text  # the command and commit that made it
    assert "![compute_updates](results/compute/compute_updates.png)" in text  # as the site reaches the results
    assert "## A curated sweep\n" in text and "Tau 0.03 won." in text and "\n### Curves\n" in text
    assert "![curve](results/sweep/run/curve.png) and [paper](https://arxiv.org)" in text
    assert "## group\n\n### Hopper-seed0\n\nMade by `swfp bench Hopper-seed0`" in text
    assert "[results/group/Hopper-seed1/](results/group/Hopper-seed1/m.md)" in text
    assert text.index("figure of Hopper-seed0") < text.index("### Hopper-seed1") < text.index("figure of Hopper-seed1")
    update_log(page, results, "results")
    assert page.read_text() == text  # idempotent
    page.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results block"):
        update_log(page, results, "results")


def test_bench_readme_puts_the_headline_grids_summary_table_in_the_readme(tmp_path):
    from swfp.readme import HEADLINE_BEGIN, HEADLINE_END, update_headline

    results = tmp_path / "benchmarks" / "results"
    (results / "grid").mkdir(parents=True)
    (results / "grid" / "grid.json").write_text(json.dumps({"command": ["swfp", "bench", "grid"], "git_commit": "c" * 40}))
    (results / "grid" / "report.md").write_text("Results from grid (IQM)\n\n| method | IQM |\n| --- | ---: |\n"
                                                "| swfp | 2.0 |\n\nEvery trial\n\n| trial |\n| --- |\n| seed0 |\n")
    (results / "grid" / "final_iqm.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n{HEADLINE_BEGIN}\nold\n{HEADLINE_END}\n\nmore\n")
    update_headline(readme, results, "grid")
    text = readme.read_text()
    assert "Results from grid (IQM)\n\n| method | IQM |\n| --- | ---: |\n| swfp | 2.0 |" in text
    assert "Every trial" not in text and "| seed0 |" not in text and "old" not in text  # the summary only
    assert "Made by `swfp bench grid` (commit `cccccccccccc`); files in `benchmarks/results/grid/`." in text
    assert "![final_iqm](benchmarks/results/grid/final_iqm.png)" in text and text.endswith("\nmore\n")
    with pytest.raises(ValueError, match="swfp bench report"):
        update_headline(readme, results, "no-such-grid")


def test_readme_names_a_grid_resumed_session_after_session_once(tmp_path):
    """Drivers that differ only in ``--stop-after`` are one command run n times; any other change
    (here the seeds) starts a new entry, so no command that ran is hidden."""
    from swfp.readme import _provenance

    def driver(commit, day, *args):
        return {"command": ["swfp", "bench", "grid", *args, "--out", "g"], "git_commit": commit * 40,
                "created": f"2026-12-0{day}T10:00"}
    drivers = [driver("a", 1, "--seeds", "0"), driver("b", 1, "--seeds", "0", "1", "--stop-after", "145"),
               driver("c", 2, "--seeds", "0", "1", "--stop-after=12"),
               driver("d", 3, "--seeds", "0", "1", "--stop-after", "90"),
               driver("e", 3, "--seeds", "0", "1", "2", "--stop-after", "30")]
    (tmp_path / "grid.json").write_text(json.dumps({**drivers[-1], "earlier_invocations": drivers[:-1]}))
    assert _provenance(tmp_path) == (
        "`swfp bench grid --seeds 0 --out g` (commit `aaaaaaaaaaaa`, 2026-12-01), then "
        "`swfp bench grid --seeds 0 1 --out g` 3 times in a row, each with `--stop-after` 12–145 min "
        "(commits `bbbbbbbbbbbb` to `dddddddddddd`, 2026-12-01 to 2026-12-03), then "
        "`swfp bench grid --seeds 0 1 2 --stop-after 30 --out g` (commit `eeeeeeeeeeee`, 2026-12-03)")


def test_readme_quotes_the_commands_it_names():
    """A command is shown as it can be typed again: an argument with a space keeps its quotes."""
    from swfp.readme import _invocation
    meta = {"command": ["/usr/bin/swfp", "bench", "compare", "a", "b", "--labels", "default", "tau 0.1"],
            "git_commit": "c" * 40}
    assert _invocation(meta) == "`swfp bench compare a b --labels default 'tau 0.1'` (commit `cccccccccccc`)"
