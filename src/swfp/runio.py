"""Run directories and checkpoint files: atomic writes, safe tensor loading, provenance.

Every file is written to a temporary sibling and renamed into place (``os.replace`` is atomic on
POSIX), so a killed process never leaves a half-written result. Weights are stored as
safetensors: loading never unpickles arbitrary objects. Every run directory gets ``meta.json``
with the package version, git commit, seed, command line, device and torch thread count, beside its
resolved ``config.json``. The device and threads are provenance, not settings: they change how fast a
run goes, not what it computes (up to floating-point order), and a resumed run may use others, so they
are kept out of ``config.json`` (what ``--resume`` reads back) and each resumption adds its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match what it is loaded into."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary sibling of ``path``, then rename it onto ``path``."""
    path = Path(path)
    # resolve first: a parent that is a link to a folder not made yet (a grid sharing another grid's
    # demonstrations on a fresh clone) makes its target rather than failing with FileExistsError
    path.parent.resolve().mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: is this a swfp run directory or checkpoint?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt — re-run the "
                              "command that wrote it") from exc


def require_format(spec, path: Path, version: int, fix: str) -> dict:
    """``spec`` (a saved policy's JSON) if it is a JSON object of format ``version``, else an error naming
    ``path`` and ``fix`` (what to re-run): a foreign file, or one written by another version of swfp."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path} is not a swfp file (a JSON {type(spec).__name__}, not an object); {fix}")
    found = spec.get("format_version")
    if found != version:
        raise CheckpointError(f"{path} has format version {found}, this swfp reads version {version}; {fix}")
    return spec


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing NaN or infinite values: weights of a run that diverged would
    otherwise load and act silently (a NaN action's only sign is Gymnasium's warning of a NaN reward)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; copy the whole run directory, or re-run the "
                              "command that wrote it")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({exc}); "
                              "re-create it with the command that wrote it") from exc
    non_finite = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if non_finite:
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite values in {non_finite[:4]}: the training "
                              "that wrote it diverged; re-run it (with a smaller learning rate or step size if it "
                              "diverges again) or use an earlier checkpoint")
    return tensors


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """``module.load_state_dict`` with an error that names the file and the mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:4]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:4]}")
        if wrong:
            details.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:4]))
        raise CheckpointError(f"checkpoint {source} does not match the model described by its config "
                              f"({'; '.join(details)}); it was written by a different model or is corrupt")
    module.load_state_dict(state)


def package_version() -> str:
    from swfp import __version__
    return __version__


def git_commit() -> str | None:
    """Commit of the swfp source tree, with ``-dirty`` if it has uncommitted changes."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def session_record(device: torch.device | None) -> dict:
    """What one process ran with: its command, when, on which device (``None``: a job that computes
    nothing with torch) and with how many torch threads."""
    record = {"command": sys.argv, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "torch_threads": torch.get_num_threads()}
    if device is not None:
        record["device"] = str(device)
    return record


def write_run_metadata(run_dir: Path, config: Any, seed: int, kind: str, device: torch.device | None = None,
                       dataset_sha256: str | None = None) -> None:
    """Write ``config.json`` (resolved config) and ``meta.json`` (provenance, with the fingerprint of the
    dataset the run learns from, :meth:`swfp.data.Dataset.fingerprint`, when it has one) into ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "meta.json", {
        "kind": kind,
        "swfp_version": package_version(),
        "git_commit": git_commit(),
        "seed": seed,
        **session_record(device),
        "torch_version": torch.__version__,
        **({"dataset_sha256": dataset_sha256} if dataset_sha256 else {}),
    })


def record_resumption(run_dir: Path, env_step: int, device: torch.device) -> None:
    """Add a resumed session (from ``env_step``) to ``meta.json``'s ``resumed`` list: its device may differ."""
    path = Path(run_dir) / "meta.json"
    meta = read_json(path)
    meta.setdefault("resumed", []).append({"env_step": env_step, **session_record(device)})
    atomic_write_json(path, meta)
