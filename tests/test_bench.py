"""`swfp bench envs` writes its table and CSV with measured, positive rates (timing itself is not asserted)."""

import csv

from swfp.cli import main


def test_bench_envs_writes_table_and_csv(tmp_path, capsys):
    assert main(["bench", "envs", "--task", "Hopper-v5", "--num-envs", "1", "2", "--steps", "20",
                 "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "envs.csv")))
    assert [int(r["num_envs"]) for r in rows] == [1, 2]
    assert all(float(r["sync_steps_per_s"]) > 0 and float(r["async_steps_per_s"]) > 0 for r in rows)
    assert "| 2 |" in (tmp_path / "envs.md").read_text()
    assert (tmp_path / "meta.json").is_file()
    assert "async / sync" in capsys.readouterr().out


def test_bc_table_aggregates_seeds(tmp_path):
    import json

    from swfp.bench import write_bc_table

    for seed, ret in [(0, 100.0), (1, 300.0)]:
        run = tmp_path / "runs" / "Hopper-v5" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({
            "task": "Hopper-v5", "steps": 10, "dataset_return_mean": 250.0, "train_seconds": 4.0,
            "bc_eval": {"return_mean": ret, "return_std": 1.0}}))
    rows = write_bc_table(tmp_path)
    assert len(rows) == 2
    assert "| Hopper-v5 | 250.0 | 200.0 ± 100.0 | 2 | 10 | 4 s |" in (tmp_path / "bc.md").read_text()


def test_bench_bc_runs_from_the_shipped_expert_and_resumes(tmp_path):
    args = ["bench", "bc", "--tasks", "Hopper-v5", "--seeds", "0", "--steps", "20", "--episodes", "2",
            "--out", str(tmp_path)]
    assert main(args) == 0
    summary = tmp_path / "runs" / "Hopper-v5" / "seed0" / "summary.json"
    first = summary.stat().st_mtime_ns
    assert main(args) == 0  # a finished run is not repeated
    assert summary.stat().st_mtime_ns == first
    assert (tmp_path / "data" / "hopper-v5-medium.npz").is_file()


def test_bench_critic_writes_both_modes(tmp_path):
    assert main(["bench", "critic", "--tasks", "swfp/QuadraticBandit-v0", "--repeats", "2", "--out", str(tmp_path)]) == 0
    row = next(csv.DictReader(open(tmp_path / "critic_entropy.csv")))
    assert float(row["none_ms"]) > 0 and float(row["exact_ms"]) > 0
    assert "exact / none" in (tmp_path / "critic_entropy.md").read_text()
