"""Where tensors live: the one parser of device names, and the host↔device copies the loop times.

Networks, optimisers and every tensor an update touches live on the run's device (``--device``,
``device=``); environments, the replay buffers and the datasets stay on the host (numpy), so a batch
is copied to the device once per update and an action back once per acting call. Every such copy
goes through :func:`to_device` or :func:`to_host`, which add their wall time to one process-wide
counter (:func:`transfer_seconds`); the runner charges it to its own ``transfer`` phase, so
``swfp bench loop`` shows what the copies cost apart from the work around them. On the CPU they are
no copies at all (the same memory) and cost nothing.
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_transfer_seconds = 0.0


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` a name means: ``auto`` is the current CUDA device when torch sees one, else the CPU;
    ``cuda`` is the current CUDA device (with its index, so devices compare equal however they were named).

    Raises ``ValueError`` naming the problem and the fix for an unknown name and for a CUDA device this
    machine does not have (the CLI reports it as a usage error, exit code 2).
    """
    text = str(name).strip().lower()
    if not _NAME.match(text):
        raise ValueError(f"unknown device {str(name)!r}: use {DEVICE_CHOICES}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this torch was built without CUDA" if torch.version.cuda is None
               else "torch sees no CUDA GPU (check the driver and CUDA_VISIBLE_DEVICES)")
        raise ValueError(f"device {text!r} asked for, but {why} (torch {torch.__version__}): run with --device cpu "
                         f"or --device auto (device='cpu' or 'auto' from Python), or install a CUDA build of torch "
                         f"on a machine with an NVIDIA GPU")
    index = int(text.partition(":")[2] or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {text!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """The device in words for tables and logs: ``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; the CPU has nothing to wait for), so a
    timer read next has counted that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timed_copy(*devices: torch.device):
    """Time a copy between the host and ``devices``, charged to :func:`transfer_seconds`. The queues are drained
    first, so the kernels queued before the copy are not charged to it."""
    global _transfer_seconds
    for device in devices:
        synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        for device in devices:
            synchronize(device)
        _transfer_seconds += time.perf_counter() - start


def to_device(values, device: torch.device, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """``values`` (numpy or a tensor) as a tensor of ``dtype`` on ``device``; a host→device copy is timed."""
    tensor = torch.as_tensor(values, dtype=dtype)
    if tensor.device == device:
        return tensor
    with _timed_copy(device, tensor.device):
        return tensor.to(device)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array; a device→host copy is timed."""
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    with _timed_copy(tensor.device):
        return tensor.cpu().numpy()


def transfer_seconds() -> float:
    """Wall time of every host↔device copy this process has made through :func:`to_device` and :func:`to_host`."""
    return _transfer_seconds


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device``: random draws on a device need a generator of that device."""
    return torch.Generator(device=device).manual_seed(seed)
