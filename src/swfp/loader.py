"""``swfp.load``: the policy of any run directory, whatever method trained it.

A run saves one of two formats (both JSON + safetensors, versioned, never pickled):

* a flow cascade, ``policy.json`` + ``policy.safetensors`` (:class:`swfp.policy.Policy`): ``swfp pretrain``
  and the ``swfp``, ``bptt``, ``dipo`` and ``bc`` runs;
* another acting network, ``actor.json`` + ``actor.safetensors``
  (:class:`swfp.algorithms.network_policy.NetworkPolicy`): ``reinflow``, ``dsrl``, ``fql``, ``sac``, ``rlpd``.

Either way the result keeps the same contract (:class:`swfp.policy.EnvPolicy`), as Stable-Baselines3's
``load`` does for every algorithm.
"""

from __future__ import annotations

from pathlib import Path

import torch

from swfp.algorithms import ACTORS
from swfp.algorithms.network_policy import NetworkPolicy
from swfp.policy import EnvPolicy, Policy
from swfp.runio import CheckpointError

STEMS = ("policy", "actor")  # the two saved formats' file names, each with .json and .safetensors
FILES = {f"{stem}.{ext}" for stem in STEMS for ext in ("json", "safetensors")}


def load(path, device: torch.device | str = "auto") -> EnvPolicy:
    """The policy saved in a run directory, or the directory of the given ``policy.*`` / ``actor.*`` file, on
    ``device`` (``"auto"``: CUDA when available, else the CPU; :func:`~swfp.devices.resolve_device`), whatever
    device trained it.

    Every failure is a :class:`~swfp.runio.CheckpointError` naming the file and the fix: nothing saved yet,
    a missing half of a pair, a truncated or foreign file, weights that do not match their JSON.
    """
    path = Path(path)
    directory = path.parent if path.is_file() and path.name in FILES else path
    if (directory / "policy.json").is_file():
        return Policy.load(directory, device)
    if (directory / "actor.json").is_file():
        return NetworkPolicy.load(directory, ACTORS, device)
    for stem in STEMS:
        if (directory / f"{stem}.safetensors").is_file():
            raise CheckpointError(f"{directory / f'{stem}.json'} is missing beside {stem}.safetensors: copy the whole "
                                  "run directory, or re-run the command that wrote it")
    if (directory / "config.json").is_file():
        raise CheckpointError(f"the run {directory} has saved no policy yet: a fine-tuning run saves it at its first "
                              "checkpoint (--checkpoint-every) and at the end")
    raise CheckpointError(f"no swfp policy at {path}: expected a run directory with policy.json + "
                          "policy.safetensors (swfp pretrain; swfp, bptt, dipo and bc runs) or actor.json + "
                          "actor.safetensors (reinflow, dsrl, fql, sac and rlpd runs)")
