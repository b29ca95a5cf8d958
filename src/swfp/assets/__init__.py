"""Files shipped inside the package: SAC experts for the built-in tasks and the Hopper medium data.

Every shipped file is reproducible with the command recorded beside it (``meta.json`` of an
expert, the ``metadata`` of a dataset), see README "Shipped experts and data".
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def _slug(task_id: str) -> str:
    return task_id.split(":")[-1].lower()


def shipped_expert_dir(task_id: str) -> Path:
    """``assets/experts/<task>``: the SAC expert shipped for a built-in task."""
    return ASSETS / "experts" / _slug(task_id)


def shipped_dataset(task_id: str, quality: str = "medium") -> Path:
    """``assets/data/<task>-<quality>.npz``; raises ``FileNotFoundError`` naming the command that makes it."""
    path = ASSETS / "data" / f"{_slug(task_id)}-{quality}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped {quality} dataset for {task_id}; make one with `swfp demos --task "
                                f"{task_id} --quality {quality} --out data/{_slug(task_id)}-{quality}.npz`")
    return path
