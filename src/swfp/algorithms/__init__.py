"""The fine-tuning methods, one file each on the shared core (:mod:`swfp.algorithms.base`), selected by name.

``swfp algos`` prints :data:`ALGORITHMS` with each method's one-line description; ``swfp finetune
--algo NAME --set KEY=VALUE`` builds its typed config with :func:`make_config`, and :func:`make` is the
same from Python. :data:`ACTORS` are the acting networks of the methods whose policy is not a flow
cascade, by the kind their saved ``actor.json`` names (read by ``swfp.load``).
"""

from __future__ import annotations

import dataclasses
import json
import typing

from swfp.algorithms.base import FineTuner
from swfp.algorithms.bptt import BPTT
from swfp.algorithms.dipo import DIPO
from swfp.algorithms.dsrl import DSRL, SteeredFlow
from swfp.algorithms.fql import FQL, OneStepPolicy
from swfp.algorithms.network_policy import Actor
from swfp.algorithms.reinflow import NoisyFlow, ReinFlow
from swfp.algorithms.rlpd import RLPD, SACFromScratch
from swfp.algorithms.sac import GaussianActor
from swfp.algorithms.swfp import SWFP

ALGORITHMS: dict[str, type[FineTuner]] = {cls.name: cls for cls in (
    SWFP, FineTuner, BPTT, ReinFlow, DSRL, FQL, DIPO, SACFromScratch, RLPD)}
ACTORS: dict[str, type[Actor]] = {cls.kind: cls for cls in (NoisyFlow, SteeredFlow, OneStepPolicy, GaussianActor)}


def get_algorithm(name: str) -> type[FineTuner]:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)} (`swfp algos` lists them)")
    return ALGORITHMS[name]


def make(name: str, pretrained, config=None, **kwargs) -> FineTuner:
    """The method ``name`` (as ``swfp finetune --algo``) starting from the pre-trained run ``pretrained``:
    ``get_algorithm(name).from_pretrained(pretrained, config=..., **kwargs)``.

    ``config`` is the method's config object, or a dict of its fields (nested ones as dicts, e.g.
    ``{"utd_ratio": 20, "critic": {"layer_norm": True}}``) set over its defaults exactly as ``--set`` sets
    them: a field's type is checked, and an unknown field is an error naming the valid ones. ``kwargs`` go
    to ``from_pretrained`` (``dataset``, ``total_env_steps``, ``device``).
    """
    if isinstance(config, dict):
        config = make_config(name, _dotted(config))
    return get_algorithm(name).from_pretrained(pretrained, config=config, **kwargs)


def _dotted(values: dict, prefix: str = "") -> dict[str, str]:
    """``{"critic": {"layer_norm": True}}`` -> ``{"critic.layer_norm": "true"}``: the ``--set`` form."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def make_config(name: str, overrides: dict[str, str] | None = None, saved: dict | None = None):
    """The algorithm's config: its defaults, or a saved ``config.json`` entry, with ``KEY=VALUE`` overrides.

    Values are read as JSON (numbers, ``true``/``false``, ``null``, lists) or else as plain strings,
    then converted to the field's declared type; a nested field is ``critic.layer_norm``. Unknown
    keys and values of the wrong type raise ``ValueError`` naming the valid keys. Nothing is evaluated.
    """
    config_class = get_algorithm(name).config_class
    if config_class is None:
        if overrides:
            raise ValueError(f"--algo {name} has no hyper-parameters; drop --set {' '.join(overrides)}")
        return None
    return build_config(config_class, overrides, saved)


def build_config(config_class, overrides: dict[str, str] | None = None, saved: dict | None = None):
    """A typed config of ``config_class`` from its defaults or ``saved``, with ``KEY=VALUE`` overrides read as
    :func:`make_config` reads them (also ``swfp expert --set``)."""
    values = _as_dict(config_class, saved or {})
    for key, text in (overrides or {}).items():
        _set(config_class, values, key.split("."), text, key)
    return _build(config_class, values)


def _as_dict(config_class, saved: dict) -> dict:
    defaults = dataclasses.asdict(config_class())
    unknown = set(saved) - set(defaults)
    if unknown:
        raise ValueError(f"saved config has fields {sorted(unknown)} that {config_class.__name__} does not know")
    return {**defaults, **saved}


def _set(config_class, values: dict, path: list[str], text: str, full_key: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if path[0] not in fields:
        raise ValueError(f"unknown hyper-parameter {full_key!r} for {config_class.__name__}; valid keys: "
                         f"{', '.join(sorted(fields))}")
    hint = typing.get_type_hints(config_class)[path[0]]
    if dataclasses.is_dataclass(hint):
        if len(path) == 1:
            raise ValueError(f"{full_key!r} is a group; set one of its fields, e.g. {full_key}.<field>")
        _set(hint, values[path[0]], path[1:], text, full_key)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    values[path[0]] = _coerce(value, hint, full_key)


def _coerce(value, hint, key: str):
    """Convert a JSON value to ``hint`` (int, float, bool, str, tuple[int, ...], or ``X | None``)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(_coerce(v, typing.get_args(hint)[0], key) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, bool, str) and type(value) is hint:
        return value
    raise ValueError(f"{key}={json.dumps(value)} is not a valid {getattr(hint, '__name__', hint)}")


def _build(config_class, values: dict):
    hints = typing.get_type_hints(config_class)
    kwargs = {k: _build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in values.items()}
    return config_class(**kwargs)
