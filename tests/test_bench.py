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
