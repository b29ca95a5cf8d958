"""The repository stays small: weights and training state never go into git (issue 40).

The history once paid over 700 MB for committed trial checkpoints, and every clone pays it again. This test
reads what git tracks (the index, so a file staged for the next commit already counts) and fails on any
``checkpoint*.pt`` and on any file under ``benchmarks/`` larger than 2 MiB; ``.gitignore`` keeps them out of
``git add`` in the first place.
"""

import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# tables, curves, plots and a grid's pre-trained flows (0.6 MB each) fit; checkpoints (14-19 MB) do not
MAX_BENCHMARK_FILE_BYTES = 2 * 1024 * 1024


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, input=stdin, capture_output=True, text=True, check=True).stdout


def heavy_tracked_files(repo: Path) -> list[str]:
    """Each tracked file of ``repo`` that breaks the rule, with why; sizes are those of the blobs git holds."""
    entries = [line.split("\t", 1) for line in git(repo, "ls-files", "--stage", "-z").split("\0") if line]
    paths = [path for _, path in entries]
    hashes = [stage.split()[1] for stage, _ in entries]
    sizes = git(repo, "cat-file", "--batch-check=%(objectsize)", stdin="".join(h + "\n" for h in hashes)).split()
    offenders = []
    for path, size in zip(paths, map(int, sizes)):
        if fnmatch(Path(path).name, "checkpoint*.pt"):
            offenders.append(f"{path}: a checkpoint ({size / 1e6:.1f} MB)")
        elif path.startswith("benchmarks/") and size > MAX_BENCHMARK_FILE_BYTES:
            offenders.append(f"{path}: {size / 1e6:.1f} MB, over the 2 MiB a benchmark file may weigh")
    return offenders


def test_no_checkpoint_or_heavy_benchmark_file_is_tracked():
    try:
        toplevel = git(REPO, "rev-parse", "--show-toplevel").strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    if Path(toplevel).resolve() != REPO:
        pytest.skip(f"{REPO} is not the root of its git checkout")
    offenders = heavy_tracked_files(REPO)
    assert not offenders, ("tracked files too heavy for git (untrack them with `git rm --cached PATH`; the files "
                           "stay on disk):\n" + "\n".join(offenders))


def test_the_rule_catches_a_staged_checkpoint_and_a_heavy_benchmark_file(tmp_path):
    """The helper on a throwaway repository: light files pass, each kind of heavy file is named once staged."""
    try:
        git(tmp_path, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    files = {"benchmarks/results/grid/report.md": b"# report\n",
             "src/big_asset.bin": b"\0" * (MAX_BENCHMARK_FILE_BYTES + 1)}  # the size rule is for benchmarks/ only
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    git(tmp_path, "add", *files)
    assert heavy_tracked_files(tmp_path) == []

    (tmp_path / "runs/seed0").mkdir(parents=True)
    (tmp_path / "runs/seed0/checkpoint_5000.pt").write_bytes(b"tiny")
    (tmp_path / "benchmarks/results/grid/trace.npy").write_bytes(b"\0" * (MAX_BENCHMARK_FILE_BYTES + 1))
    git(tmp_path, "add", "runs/seed0/checkpoint_5000.pt", "benchmarks/results/grid/trace.npy")
    offenders = heavy_tracked_files(tmp_path)
    assert len(offenders) == 2
    assert offenders[0].startswith("benchmarks/results/grid/trace.npy: 2.1 MB")
    assert offenders[1].startswith("runs/seed0/checkpoint_5000.pt: a checkpoint")


def test_readme_is_a_short_front_door_whose_links_resolve():
    """README.md stays the front door (issue 40): at most 250 lines, and every relative link it makes (to
    the documentation's pages, to result plots) names a file that exists, so moving a page breaks this test."""
    import re

    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is over 250 lines: move long material into docs/"
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)", readme) if not t.startswith(("http:", "https:"))]
    assert targets, "README.md links to no page of the documentation"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
