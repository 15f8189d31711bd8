"""Loading experiment configs: YAML files, bundled presets, ``extends`` chains and overrides.

The schema lives in :mod:`eqprop.train.schema` and the typed conversion in
:mod:`eqprop.train.convert`; this module reads text into them. Errors are
:class:`ConfigError` with a one-line message naming the dotted field path, the bad value and what
is accepted. The presets in ``eqprop/presets/*.yaml`` include the paper's CIFAR-10 recipes
(spec §6).

Example:
    >>> cfg = load_config("digits-quickstart", ["optim.lr=1e-3", "model.dense=[32]"])
    >>> cfg.optim.lr, cfg.model.dense, cfg.model.n_layers
    (0.001, (32,), 2)
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

from eqprop.core.validation import invalid, show, suggest
from eqprop.train.checkpoint import atomic_write
from eqprop.train.confdiff import INCIDENTAL, changed_paths, flatten
from eqprop.train.convert import (
    ConfigError,
    config_to_dict,
    describe_type,
    from_mapping,
    hints,
    is_seq,
    union_args,
    unknown_key,
)
from eqprop.train.schema import (
    ConvLayerConfig,
    DataConfig,
    DynamicsConfig,
    EstimatorConfig,
    ExperimentConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    SchedulerConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError",
    "ConvLayerConfig",
    "DataConfig",
    "DynamicsConfig",
    "EstimatorConfig",
    "ExperimentConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedulerConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "config_yaml",
    "list_presets",
    "load_config",
    "preset_path",
    "save_config",
]


def config_from_dict(d: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an experiment config from plain data (e.g. parsed YAML).

    Unknown keys are rejected at every level; missing keys and sections take their defaults.

    Raises:
        ConfigError: naming the first invalid field.
    """
    if not isinstance(d, Mapping):
        raise invalid(d, "a mapping at the top level of the config")
    return from_mapping(ExperimentConfig, d)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a float and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML silently keeps the last of two equal keys, which hides a doubled section.
        keys = Counter(
            k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"
        )
        for key, count in keys.items():
            if count > 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads '1e-3' (no dot) as a string; learning rates are commonly written that way.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"invalid YAML{where}: {problem}"


def _read_yaml(path: Path) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file ({err.strerror or err})", str(path)) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(err), str(path)) from None
    if data is None:
        raise ConfigError(
            "the file is empty (or holds only comments); expected a mapping of config sections, "
            "e.g. 'extends: digits-quickstart'",
            str(path),
        )
    if not isinstance(data, dict):
        raise ConfigError(f"top level is a {type(data).__name__}; expected a mapping", str(path))
    return data


def config_yaml(cfg: ExperimentConfig) -> str:
    """``cfg`` as the YAML text :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = config_yaml(cfg).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


# --------------------------------------------------------------------------------------------
# Overrides ("a.b=value", "model.conv[0].channels=64").


def _parse_override(text: str) -> tuple[str, list[str | int], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    # "model.conv[0].channels" and "model.conv.0.channels" name the same field.
    segments: list[str | int] = [
        int(seg) if seg.strip().isdigit() else seg.strip()
        for seg in key.replace("[", ".").replace("]", "").split(".")
    ]
    if not sep or any(seg == "" for seg in segments):
        raise invalid(text, "KEY=VALUE, e.g. optim.lr=0.1 or model.dense=[512,512]", "override")
    try:
        value = yaml.load(raw, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError(f"{raw.strip()!r} is not valid: {_yaml_error(err)}", key) from None
    # "name=42" means the string '42' for a str field: the value is read with the field's type.
    if value is None or isinstance(value, (bool, int, float)):
        value = _RawScalar(raw.strip(), value)
    return key, segments, value


@dataclass(frozen=True)
class _RawScalar:
    """A YAML scalar override kept with its source text, for fields that accept strings."""

    text: str
    value: Any


def _is_section_tuple(tp: Any) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) is tuple and bool(args) and dataclasses.is_dataclass(args[0])


def _optional_section(tp: Any) -> Any:
    """The section type of an optional section (``X | None``, X a dataclass), else ``tp``."""
    args = union_args(tp)
    if args is not None and len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if dataclasses.is_dataclass(inner):
            return inner
    return tp


def _set_override(root: dict[Any, Any], text: str) -> None:
    key, segments, value = _parse_override(text)
    node: Any = root  # the dict (section) or list (of sections) being walked
    tp: Any = ExperimentConfig  # its schema type
    path = ""
    for depth, seg in enumerate(segments):
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if seg not in names:
                raise unknown_key(seg, names, path)
            child_tp = hints(cast(type, tp))[seg]  # a dataclass annotation: a class
            child_path = f"{path}.{seg}" if path else str(seg)
        else:
            child_path = f"{path}[{seg}]"
            if not isinstance(seg, int) or seg >= len(node):
                raise ConfigError(
                    f"index {seg!r} is not valid; {path} has {len(node)} entries", child_path
                )
            child_tp = typing.get_args(tp)[0]
        if depth == len(segments) - 1:
            if isinstance(value, _RawScalar):
                accepted = union_args(child_tp) or (child_tp,)
                keep = str not in accepted or (value.value is None and type(None) in accepted)
                value = value.value if keep else value.text
            node[seg] = value
            return
        child_tp = _optional_section(child_tp)  # e.g. model.graph.residual.widths
        sectioned = dataclasses.is_dataclass(child_tp)
        if not sectioned and not _is_section_tuple(child_tp):
            raise ConfigError(f"unknown key; {child_path} is a value, not a section", key)
        # A list (of sections) is only ever indexed by an int segment (checked above).
        child = node[cast(int, seg)] if isinstance(node, list) else node.get(seg)
        if child is None:
            child = {} if sectioned else []
        if sectioned and not isinstance(child, Mapping):
            raise invalid(child, "a mapping", child_path)
        if not sectioned and not is_seq(child):
            raise invalid(child, describe_type(child_tp), child_path)
        # Copy on the way down so the caller's data is never modified.
        node[seg] = child = dict(child) if sectioned else list(child)
        node, tp, path = child, child_tp, child_path


def _apply_overrides(raw: Mapping[Any, Any], overrides: Sequence[str]) -> dict[Any, Any]:
    root = dict(raw)
    for text in overrides:
        _set_override(root, text)
    return root


# --------------------------------------------------------------------------------------------
# Presets and loading.


def _preset_dir() -> Path:
    # Presets ship as package data in a regular directory (setuptools package-data).
    return Path(str(resources.files("eqprop.presets")))


def _preset_files() -> list[Path]:
    return sorted(_preset_dir().glob("*.yaml"), key=lambda p: p.stem)


def list_presets() -> list[tuple[str, str]]:
    """Return ``(name, description)`` of every bundled preset, sorted by name."""
    return [(p.stem, str(_read_yaml(p).get("description", "")).strip()) for p in _preset_files()]


def preset_path(name: str) -> Path:
    """Return the YAML file of the bundled preset ``name``.

    Raises:
        ConfigError: if there is no such preset (the message lists the available ones).
    """
    files = {p.stem: p for p in _preset_files()}
    if name not in files:
        raise ConfigError(
            f"{name!r} is not a preset{suggest(name, list(files))}; available: {', '.join(files)}",
            "preset",
        )
    return files[name]


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a config from a YAML file or a preset name, then apply ``overrides``.

    Args:
        source: a YAML path, or the name of a bundled preset (see :func:`list_presets`).
        overrides: ``"dotted.key=value"`` strings; the value is YAML (``optim.lr=0.1``,
            ``model.dense=[512,512]``, ``data.root=null``), except that a string field keeps
            the text (``name=42`` is ``'42'``); list entries are indexed as
            ``model.conv[0].channels=64``. Applied in order before validation.

    Raises:
        ConfigError: for an unreadable or invalid file, an unknown preset, a malformed or
            unknown override, or an invalid resulting config.
    """
    raw = _resolve_raw(source, ())
    path = _source_path(source)
    if path.parent != _preset_dir() and "name" not in _read_yaml(path):
        raw["name"] = path.stem  # a user's file without a name names its runs after itself
    final = _apply_overrides(raw, overrides)
    if not any(o.partition("=")[0].strip() == "description" for o in overrides):
        _describe_changes(str(raw.get("name", source)), raw, final)
    return config_from_dict(final)


def _describe_changes(base: str, before: Mapping[Any, Any], after: dict[Any, Any]) -> None:
    """Replace an inherited description that the changes made untrue by one that says what
    changed (fields that do not change what a run computes are left out)."""
    changed = changed_paths(before, after, ignore=INCIDENTAL)
    if changed:
        flat = flatten(after)
        shown = [f"{k}={show(flat[k]) if k in flat else '(default)'}" for k in changed[:8]]
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        after["description"] = f"{base} with {', '.join(shown)}{more}"


def _source_path(source: str | Path) -> Path:
    path = Path(source)
    bare = isinstance(source, str) and len(path.parts) == 1 and path.suffix not in (".yaml", ".yml")
    if path.is_dir() and bare and source in {p.stem for p in _preset_files()}:
        return preset_path(str(source))  # a directory is never a config: the preset is meant
    if path.is_dir():
        hint = "; to continue a run, use 'eqprop resume'" if (path / "config.yaml").exists() else ""
        raise ConfigError(f"is a directory; expected a YAML file or a preset name{hint}", str(path))
    if not path.is_file():
        if isinstance(source, Path) or len(path.parts) > 1 or path.suffix in (".yaml", ".yml"):
            raise ConfigError("no such config file", str(path))
        path = preset_path(str(source))
    return path


def _merge(base: dict[Any, Any], child: Mapping[Any, Any]) -> dict[Any, Any]:
    """Deep-merge ``child`` into ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_raw(source: str | Path, seen: tuple[str, ...]) -> dict[Any, Any]:
    """Read a config, following ``extends: <preset or path>`` (relative to the file) chains."""
    path = _source_path(source)
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(
            f"{show(parent)} is not valid; expected a preset name or a path", "extends"
        )
    if str(path.resolve()) in seen:
        raise ConfigError(f"{show(parent)} makes a cycle of 'extends'", "extends")
    relative = path.parent / parent
    base = _resolve_raw(relative if relative.is_file() else parent, (*seen, str(path.resolve())))
    merged = _merge(base, raw)
    if "description" not in raw:
        _describe_changes(parent, base, merged)
    return merged
