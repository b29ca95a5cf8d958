"""Atomic writes and safe, checked checkpoint loading."""

import json

import pytest
import torch

from swfp.runio import (CheckpointError, atomic_write_json, load_state_strict, load_tensors, read_json,
                        save_tensors, write_run_metadata)


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"y": [1, 2]})
    assert json.loads(path.read_text()) == {"y": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_through_a_link_to_a_folder_not_made_yet(tmp_path):
    """A grid links ``data`` to another grid's ignored folder; on a fresh clone the link dangles."""
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "data").symlink_to("../other/data")
    atomic_write_json(tmp_path / "grid" / "data" / "a.json", {"x": 1})
    assert json.loads((tmp_path / "other" / "data" / "a.json").read_text()) == {"x": 1}


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"w": torch.ones(2)})
    with pytest.raises(Exception):
        save_tensors(path, {"w": object()})  # not a tensor: the write fails midway
    assert torch.equal(load_tensors(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_corrupt_and_mismatched_checkpoints_are_named(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_tensors(bad)
    with pytest.raises(CheckpointError, match="missing"):
        load_tensors(tmp_path / "none.safetensors")
    (tmp_path / "c.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(tmp_path / "c.json")
    with pytest.raises(CheckpointError, match=r"shape mismatch weight: file \(3, 2\) vs model \(2, 2\)"):
        load_state_strict(torch.nn.Linear(2, 2), {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}, "f")


def test_run_metadata_has_provenance(tmp_path):
    write_run_metadata(tmp_path, {"lr": 1e-3}, seed=3, kind="test")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["swfp_version"] and meta["kind"] == "test"
    assert "git_commit" in meta
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3}
