"""Offline datasets: one in-memory type, readers for the common formats, and validation.

A :class:`Dataset` is a flat table of transitions ``(s, a, r, s', terminal, timeout)`` laid out
as D4RL does: episodes stored one after another, actions in the **environment's** units (not the
policy's ``[-1, 1]`` box; :func:`normalize_actions` maps between them), ``terminals`` set only on
true environment termination (the only flag that stops bootstrapping) and ``timeouts`` on
time-limit truncation or the end of a recorded episode. Readers exist for our own ``.npz``,
D4RL HDF5, local Minari datasets and robomimic HDF5; :func:`load_dataset` picks one by looking
at the file and then validates the result against the task, so a dataset recorded for another
task, with NaNs or with actions outside the action box fails loudly at load time instead of
silently training a bad policy. Every problem raises :class:`DatasetError` naming the field and
the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from swfp.envs import check_spaces, make_raw_env, env_dims
from swfp.runio import atomic_write

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
_MATRICES = ("observations", "actions", "next_observations")  # (N, d) float32
_VECTORS = ("rewards",)  # (N,) float32
_FLAGS = ("terminals", "timeouts")  # (N,) bool
ACTION_TOLERANCE = 1e-5
SUPPORTED = ("swfp .npz", "D4RL .hdf5/.h5 (top-level 'observations', ...)",
             "Minari dataset directory or main_data.hdf5", "robomimic .hdf5 (data/demo_*)")


class DatasetError(ValueError):
    """A dataset that is missing, corrupt, malformed or does not fit its task."""


@dataclass
class Dataset:
    """Transitions in D4RL layout; see the module docstring for the conventions."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def episode_returns(self) -> np.ndarray:
        """Sum of rewards per episode. Episodes end at ``terminals | timeouts``; rows after the
        last end form one more (partial) episode."""
        if len(self) == 0:
            return np.zeros(0)
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        starts = np.concatenate([[0], ends[ends < len(self)]])
        return np.add.reduceat(self.rewards.astype(np.float64), starts)

    def fingerprint(self) -> str:
        """SHA-256 of the transitions (each field's dtype, shape and bytes; not the metadata), recorded in a run's
        ``meta.json``, so a result names exactly the data it learned from (two files with the same fingerprint
        hold the same transitions)."""
        digest = hashlib.sha256()
        for name in FIELDS:
            value = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
            digest.update(value.tobytes())
        return digest.hexdigest()

    def observation_stats(self, min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std of the observations (std floored at ``min_std`` so constant
        dimensions do not blow up). These normalise the policy's input and are saved with it."""
        obs = self.observations.astype(np.float64)
        return obs.mean(0).astype(np.float32), np.maximum(obs.std(0), min_std).astype(np.float32)

    def validate(self, task_id: str | None = None) -> "Dataset":
        """Check shapes, dtypes and finiteness, then (for ``task_id``, else the metadata's task,
        if any) that observations and actions fit the task's spaces. Returns ``self``."""
        self._check_arrays()
        task_id = task_id or self.metadata.get("task")
        if task_id:
            self._check_task(task_id)
        return self

    def save(self, path) -> Path:
        """Write as compressed ``.npz`` (suffix added if missing), atomically: a killed process
        leaves either the old file or the new one, never half of one."""
        self._check_arrays()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays = {name: getattr(self, name) for name in FIELDS}
        arrays["metadata_json"] = np.array(json.dumps(self.metadata, default=_json_default))

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to tmp
                np.savez_compressed(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
        atomic_write(path, write)
        return path

    def _check_arrays(self) -> None:
        for name in FIELDS:
            value = getattr(self, name)
            want_ndim = 2 if name in _MATRICES else 1
            if not isinstance(value, np.ndarray) or value.ndim != want_ndim:
                shape = getattr(value, "shape", type(value).__name__)
                want = "(N, dim)" if want_ndim == 2 else "(N,)"
                raise DatasetError(f"field '{name}' has shape {shape} but must be {want_ndim}-D {want}; "
                                   f"reshape it (e.g. a 1-D action becomes shape (N, 1))")
            want_dtype = np.bool_ if name in _FLAGS else np.float32
            if value.dtype != want_dtype:
                raise DatasetError(f"field '{name}' has dtype {value.dtype} but must be {np.dtype(want_dtype)}; "
                                   "build datasets with a swfp reader or cast the array")
        _check_lengths({name: getattr(self, name) for name in FIELDS})
        if len(self) == 0:
            raise DatasetError("dataset is empty (0 transitions); regenerate it (e.g. `swfp demos`) "
                               "or point to a file that holds data")
        if self.next_observations.shape[1] != self.obs_dim:
            raise DatasetError(f"field 'next_observations' has {self.next_observations.shape[1]} columns but "
                               f"'observations' has {self.obs_dim}; both must hold the same observation")
        for name in _MATRICES + _VECTORS:
            values = getattr(self, name).reshape(len(self), -1)
            nan_rows = int(np.isnan(values).any(1).sum())
            inf_rows = int(np.isinf(values).any(1).sum())
            if nan_rows or inf_rows:
                found = " and ".join(f"{kind} in {rows} of {len(self)} rows"
                                     for kind, rows in (("NaN", nan_rows), ("inf", inf_rows)) if rows)
                raise DatasetError(f"field '{name}' contains {found}; drop those transitions or regenerate "
                                   "the dataset")

    def _check_task(self, task_id: str) -> None:
        obs_dim, act_dim = env_dims(task_id)  # TaskError for an id that cannot be made
        if self.obs_dim != obs_dim:
            raise DatasetError(f"observations have {self.obs_dim} dimensions but task {task_id!r} has {obs_dim}; "
                               "the dataset was recorded for another task — pass the right task_id")
        if self.act_dim != act_dim:
            raise DatasetError(f"actions have {self.act_dim} dimensions but task {task_id!r} has {act_dim}; "
                               "the dataset was recorded for another task — pass the right task_id")
        low, high = action_bounds(task_id)
        excess = np.maximum(low - self.actions, self.actions - high).max(1)
        outside = excess > ACTION_TOLERANCE
        if outside.any():
            raise DatasetError(
                f"field 'actions' has {int(outside.sum())} of {len(self)} rows outside the action box of "
                f"{task_id!r} [{low.min():g}, {high.max():g}] (max violation {excess.max():.3g}); actions "
                "must be in environment units — if they are normalised to [-1, 1], map them back with "
                "swfp.data.denormalize_actions")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


# --- actions ---------------------------------------------------------------------------------

def action_bounds(task_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of the task's raw action space (float32), i.e. environment units."""
    env = make_raw_env(task_id)
    try:
        check_spaces(task_id, env)
        return env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
    finally:
        env.close()


def normalize_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Environment units ``[low, high]`` -> ``[-1, 1]`` (the inverse of gymnasium's RescaleAction)."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    return (2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0).astype(np.float32)


def denormalize_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``[-1, 1]`` -> environment units ``[low, high]`` (what gymnasium's RescaleAction does)."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    return (low + 0.5 * (np.asarray(actions, np.float64) + 1.0) * (high - low)).astype(np.float32)


# --- building ---------------------------------------------------------------------------------

def _check_lengths(fields: dict[str, np.ndarray], where: str = "") -> None:
    lengths = {name: len(value) for name, value in fields.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise DatasetError(f"{where + ': ' if where else ''}fields have different lengths ({listed}); every "
                           "field needs one row per transition — the file is truncated or was written "
                           "inconsistently")


def build_dataset(fields: dict[str, np.ndarray], metadata: dict) -> Dataset:
    """Turn raw field arrays into a :class:`Dataset` with checked shapes and canonical dtypes.

    Missing metadata gets defaults; ``episode_returns`` is computed from the rewards if absent.
    """
    missing = [name for name in FIELDS if name not in fields]
    if missing:
        raise DatasetError(f"missing keys {missing}; a dataset needs {list(FIELDS)} — is this the right "
                           "file, and was it written completely?")
    arrays = {}
    for name in FIELDS:
        value = np.asarray(fields[name])
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise DatasetError(f"field '{name}' has non-numeric dtype {value.dtype}; it must hold numbers")
        if name in _FLAGS:
            bad = ~np.isin(value, (0, 1))
            if bad.any():
                raise DatasetError(f"field '{name}' has {int(bad.sum())} values other than 0/1 (e.g. "
                                   f"{value[bad].flat[0].item()!r}); it must be boolean")
            value = value.astype(np.bool_)
        else:
            value = value.astype(np.float32)
        arrays[name] = value
    dataset = Dataset(**arrays, metadata={"task": None, "source": "unknown", "quality": None, **metadata})
    dataset._check_arrays()
    dataset.metadata.setdefault("episode_returns", [float(r) for r in dataset.episode_returns()])
    return dataset


def _concat_episodes(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-episode fields. The last step of an episode that neither terminated nor
    was truncated is marked as a timeout: the recording ended there, and episodes must stay
    separable."""
    if not episodes:
        return {name: np.zeros((0, 1) if name in _MATRICES else 0) for name in FIELDS}
    for episode in episodes:
        episode["timeouts"] = np.asarray(episode["timeouts"], bool).copy()
        episode["timeouts"][-1] |= not bool(episode["terminals"][-1])
    return {name: np.concatenate([episode[name] for episode in episodes]) for name in FIELDS}


@contextmanager
def _about(path):
    """Prefix a DatasetError raised inside with the file it is about."""
    try:
        yield
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from exc.__cause__


@contextmanager
def _open_hdf5(path):
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"file is corrupt or empty, not a readable HDF5 file ({exc}); re-download or "
                           "regenerate it") from exc
    with f:
        yield f


def _require(group: h5py.Group, keys: list[str], where: str = "file") -> None:
    missing = [key for key in keys if key not in group]
    if missing:
        raise DatasetError(f"{where} is missing keys {missing} (has {sorted(group.keys())}); is this the "
                           "right file, and was it written completely?")


def _parse_json(text, where: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where} is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(value, dict):
        raise DatasetError(f"{where} is not a JSON object; the file is corrupt")
    return value


def _numbered(group: h5py.Group, prefix: str) -> list[str]:
    names = [name for name in group if name.startswith(prefix) and name[len(prefix):].isdigit()]
    return sorted(names, key=lambda name: int(name[len(prefix):]))


# --- readers ----------------------------------------------------------------------------------

def read_npz(path) -> Dataset:
    """Our format (:meth:`Dataset.save`). Never unpickles: object arrays are refused."""
    with _about(path):
        try:
            with np.load(path, allow_pickle=False) as npz:
                fields = {name: npz[name] for name in npz.files if name in FIELDS}
                metadata_json = str(npz["metadata_json"]) if "metadata_json" in npz.files else "{}"
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise DatasetError(f"file is corrupt or empty, not a readable .npz without pickled objects "
                               f"({type(exc).__name__}: {exc}); regenerate it with Dataset.save") from exc
        return build_dataset(fields, _parse_json(metadata_json, "'metadata_json'"))


def read_d4rl_hdf5(path) -> Dataset:
    """D4RL layout: top-level ``observations, actions, rewards, terminals, timeouts`` and
    usually ``next_observations``.

    Old D4RL files lack ``next_observations``. It is then taken from the next row within the same
    episode (as D4RL's ``qlearning_dataset``). The last transition of an episode that ended by
    timeout (or where the file ends) has no recorded successor and is dropped; the step before it
    becomes that episode's timeout. A terminal transition is kept, with its own observation as a
    placeholder next observation (never bootstrapped from), so terminations are not lost.
    """
    with _about(path), _open_hdf5(path) as f:
        _require(f, ["observations", "actions", "rewards", "terminals", "timeouts"])
        fields = {name: f[name][()] for name in FIELDS if name in f}
    with _about(path):
        metadata = {"source": "d4rl", "source_path": str(path)}
        derive = "next_observations" not in fields
        if derive:
            fields["next_observations"] = fields["observations"]  # placeholder, replaced below
        dataset = build_dataset(fields, metadata)
        return build_dataset(_derive_next_observations(dataset), metadata) if derive else dataset


def _derive_next_observations(d: Dataset) -> dict[str, np.ndarray]:
    ends = d.terminals | d.timeouts
    ends[-1] = True
    next_obs = np.concatenate([d.observations[1:], d.observations[-1:]])
    next_obs[d.terminals] = d.observations[d.terminals]
    drop = ends & ~d.terminals
    before = np.flatnonzero(drop) - 1
    before = before[(before >= 0) & ~ends[np.maximum(before, 0)]]  # previous row, same episode
    timeouts = d.timeouts.copy()
    timeouts[before] = True
    fields = {"observations": d.observations, "actions": d.actions, "rewards": d.rewards,
              "next_observations": next_obs, "terminals": d.terminals, "timeouts": timeouts}
    return {name: value[~drop] for name, value in fields.items()}


def read_minari(path) -> Dataset:
    """A local Minari dataset, read with h5py (the ``minari`` package is not needed).

    ``path`` is the dataset directory (holding ``data/main_data.hdf5`` and ``data/metadata.json``)
    or the ``main_data.hdf5`` file. Each ``episode_<i>`` group holds ``observations`` (T+1 rows)
    and ``actions, rewards, terminations, truncations`` (T rows). The task id comes from
    ``metadata.json``'s ``env_spec``.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "data" / "main_data.hdf5", path / "main_data.hdf5"]
        main = next((p for p in candidates if p.is_file()), None)
        if main is None:
            raise DatasetError(f"{path} is a directory without data/main_data.hdf5; point to a Minari "
                               f"dataset directory or a file in one of: {', '.join(SUPPORTED)}")
    else:
        main = path
    metadata = {"source": "minari", "source_path": str(path), "task": None}
    with _about(main):
        meta_file = main.parent / "metadata.json"
        if meta_file.is_file():
            info = _parse_json(meta_file.read_text(), meta_file.name)
            spec = info.get("env_spec")
            spec = _parse_json(spec, "env_spec") if isinstance(spec, str) else spec
            metadata["task"] = (spec or {}).get("id")
            if info.get("dataset_id"):
                metadata["dataset_id"] = info["dataset_id"]
        episodes = []
        with _open_hdf5(main) as f:
            for name in _numbered(f, "episode_"):
                group = f[name]
                _require(group, ["observations", "actions", "rewards", "terminations", "truncations"], name)
                if isinstance(group["observations"], h5py.Group):
                    raise DatasetError(f"{name}/observations is a dictionary observation; swfp needs flat "
                                       "observations (record the dataset with FlattenObservation)")
                obs = group["observations"][()]
                steps = len(group["actions"])
                if len(obs) != steps + 1:
                    raise DatasetError(f"{name}: observations has {len(obs)} rows but actions has {steps}; "
                                       "Minari stores T+1 observations for T actions — the file is corrupt")
                episode = {"observations": obs[:-1], "next_observations": obs[1:],
                           "actions": group["actions"][()], "rewards": group["rewards"][()],
                           "terminals": group["terminations"][()], "timeouts": group["truncations"][()]}
                _check_lengths(episode, name)
                if steps:
                    episodes.append(episode)
        return build_dataset(_concat_episodes(episodes), metadata)


def read_robomimic(path, obs_keys: list[str] | None = None) -> Dataset:
    """robomimic HDF5: ``data/demo_<i>/{obs/<key>, next_obs/<key>, actions, rewards, dones}``.

    Observations are the low-dimensional keys concatenated in ``obs_keys`` order (default: the
    sorted keys whose arrays are 2-D, i.e. no images). The task is ``env_name`` from
    ``data.attrs["env_args"]``. A demo ends with a terminal if its last ``dones`` is set, else with
    a timeout; ``dones`` set earlier in a demo are ignored, since the recording went on.
    """
    with _about(path), _open_hdf5(path) as f:
        _require(f, ["data"])
        data = f["data"]
        metadata = {"source": "robomimic", "source_path": str(path), "task": None}
        if "env_args" in data.attrs:
            metadata["task"] = _parse_json(data.attrs["env_args"], "data.attrs['env_args']").get("env_name")
        demos = _numbered(data, "demo_")
        if obs_keys is None and demos:
            first = data[demos[0]]
            _require(first, ["obs"], demos[0])
            obs_keys = sorted(key for key in first["obs"] if first["obs"][key].ndim == 2)
            if not obs_keys:
                raise DatasetError(f"{demos[0]}/obs has no low-dimensional (2-D) keys "
                                   f"(has {sorted(first['obs'])}); pass obs_keys=[...]")
        metadata["obs_keys"] = list(obs_keys or [])
        episodes = []
        for name in demos:
            demo = data[name]
            _require(demo, ["obs", "next_obs", "actions", "rewards", "dones"], name)
            episode = {"observations": _robomimic_obs(demo["obs"], obs_keys, f"{name}/obs"),
                       "next_observations": _robomimic_obs(demo["next_obs"], obs_keys, f"{name}/next_obs"),
                       "actions": demo["actions"][()], "rewards": demo["rewards"][()]}
            steps = len(episode["actions"])
            if steps:
                episode["terminals"] = np.zeros(steps, bool)
                episode["terminals"][-1] = bool(demo["dones"][-1])
                episode["timeouts"] = np.zeros(steps, bool)
                _check_lengths({**episode, "dones": demo["dones"]}, name)
                episodes.append(episode)
        return build_dataset(_concat_episodes(episodes), metadata)


def _robomimic_obs(group: h5py.Group, keys: list[str], where: str) -> np.ndarray:
    _require(group, keys, where)
    parts = []
    for key in keys:
        array = group[key][()]
        if array.ndim != 2:
            raise DatasetError(f"{where}/{key} has shape {array.shape}; only low-dimensional (T, d) keys "
                               "can be used — leave it out of obs_keys")
        parts.append(array)
    return np.concatenate(parts, axis=1)


# --- dispatch ---------------------------------------------------------------------------------

def load_dataset(path, task_id: str | None = None, **reader_kwargs) -> Dataset:
    """Read a dataset in any supported format, then validate it against ``task_id`` (or the task
    recorded in the file). ``reader_kwargs`` go to the reader (e.g. ``obs_keys`` for robomimic)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no dataset at {path}; check the path, or create one with `swfp demos`")
    if path.suffix == ".npz":
        dataset = read_npz(path, **reader_kwargs)
    elif path.is_dir() or path.name == "main_data.hdf5":
        dataset = read_minari(path, **reader_kwargs)
    elif path.suffix in (".hdf5", ".h5"):
        with _about(path), _open_hdf5(path) as f:
            keys = sorted(f.keys())
            is_robomimic = isinstance(f.get("data"), h5py.Group)
        layout = "d4rl" if "observations" in keys else "robomimic" if is_robomimic else None
        if layout is None:
            raise DatasetError(f"{path}: HDF5 layout not recognised (top-level keys {keys}); supported "
                               f"formats: {'; '.join(SUPPORTED)}")
        reader = read_d4rl_hdf5 if layout == "d4rl" else read_robomimic
        dataset = reader(path, **reader_kwargs)
    else:
        raise DatasetError(f"{path}: unknown dataset format {path.suffix or '(no extension)'!r}; supported "
                           f"formats: {'; '.join(SUPPORTED)}")
    if task_id and not dataset.metadata.get("task"):
        dataset.metadata["task"] = task_id
    with _about(path):
        return dataset.validate(task_id)
