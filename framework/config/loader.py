"""YAML → typed dataclass loading: base files, ``a.b=c`` overrides, errors that name the key and the file.

Resolution order (later wins): ``base:`` file(s) of a YAML (recursively) → the YAML itself → command-line
overrides. Every leaf value remembers where it came from, so an unknown key or a type mismatch is reported as
``model.embedding_dim: expected int, got 'abc' (from configs/ranking/x.yaml)``.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

CLI = "<command line>"
_YAML11_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and its source."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(dst: dict[str, Any], src: Mapping[str, Any], origin: dict[str, str], source: str, prefix: str = "") -> None:
    """Deep-merge ``src`` into ``dst``, recording the source of every leaf written."""
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{prefix}{key!r}: keys must be strings (in {source})")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, source, full + ".")
        else:
            dst[key] = _copy(value)
            _mark(value, full, origin, source)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _mark(value: Any, full: str, origin: dict[str, str], source: str) -> None:
    origin[full] = source
    if isinstance(value, Mapping):
        for k, v in value.items():
            _mark(v, f"{full}.{k}", origin, source)


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a YAML with its ``base:`` chain into a plain dict plus a key → source-file map."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"cyclic 'base:' chain: {chain}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: 'base' must be a path or a list of paths")
        for base in bases:
            base_data, base_origin = load_raw(path.parent / base, (*_seen, path))
            _merge(merged, base_data, origin, "")
            origin.update(base_origin)
    _merge(merged, data, origin, str(path))
    return merged, origin


def apply_overrides(data: dict[str, Any], origin: dict[str, str], overrides: Sequence[str]) -> None:
    """Apply ``a.b=c`` overrides in place; values are parsed as YAML scalars/flow collections."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value ({CLI})")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key ({CLI})")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e} ({CLI})") from e
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {key}: '{'.'.join(parts[: i + 1])}' is not a section ({CLI})")
            node = nxt
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            _merge(node[parts[-1]], value, origin, CLI, key + ".")  # a{b: 1} on the command line merges, like a base
        else:
            node[parts[-1]] = value
        _mark(value, key, origin, CLI)


def _parent_key(key: str) -> str:
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]


def _source(origin: Mapping[str, str], key: str) -> str:
    probe = key
    while probe:
        if probe in origin and origin[probe]:
            return origin[probe]
        probe = _parent_key(probe)
    return "defaults"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, origin: Mapping[str, str]) -> Any:
    def fail(msg: str) -> typing.NoReturn:
        raise ConfigError(f"{key}: {msg} (from {_source(origin, key)})")

    org = get_origin(tp)
    if org in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail(f"expected {_type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, origin)
            except ConfigError as e:
                errors.append(str(e))
        fail(f"expected {' | '.join(_type_name(a) for a in args)}, got {value!r}")
    if org is Literal:
        if value not in get_args(tp):
            fail(f"expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            fail(f"expected a mapping for section {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, key + ".", origin)
    if org in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list):
            fail(f"expected a list, got {value!r}")
        (inner,) = get_args(tp)[:1] or (Any,)
        items = [_convert(v, inner, f"{key}[{i}]", origin) for i, v in enumerate(value)]
        return tuple(items) if org is tuple or tp is tuple else items
    if org in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            fail(f"expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (str, Any)
        return {_convert(k, kt, key, origin): _convert(v, vt, f"{key}.{k}", origin) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            fail(f"expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.match(value):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"expected float, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, datetime.date):
            return value.isoformat()  # YAML reads an unquoted 2026-01-05 as a date; str fields take it as written
        if not isinstance(value, str):
            fail(f"expected str, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config field type {tp!r}")  # schema bug, not a user error


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, origin: Mapping[str, str]) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for name in data:
        if name not in fields:
            key = f"{prefix}{name}"
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key '{key}' (from {_source(origin, key)}); known keys here: {known}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            value = data[name]
            if isinstance(value, Mapping) and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
                if isinstance(default, dict):  # a partial override of a dict field keeps the other defaults
                    value = {**default, **value}
            kwargs[name] = _convert(value, hints[name], key, origin)
        elif dataclasses.is_dataclass(hints[name]) and f.default is dataclasses.MISSING:
            kwargs[name] = _build(hints[name], {}, key + ".", origin)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{key}' (in {_source(origin, prefix.rstrip('.')) or 'config'})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        # __post_init__ raises ValueError naming the field; add where the section came from.
        section = prefix.rstrip(".")
        sources = sorted({src for k, src in origin.items() if src and (not section or k.startswith(prefix))})
        raise ConfigError(f"{prefix}{e} (from {', '.join(sources) or 'defaults'})") from e


def from_dict(cls: type[T], data: Mapping[str, Any], origin: Mapping[str, str] | None = None) -> T:
    return _build(cls, data, "", origin or {})


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Load ``path`` (with its base chain) and ``overrides`` into the dataclass ``cls``."""
    data, origin = load_raw(path)
    apply_overrides(data, origin, overrides)
    return from_dict(cls, data, origin)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass (for YAML/JSON dumps and checkpoints)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a config dataclass, got {type(cfg).__name__}")

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically, so a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def key_source(path: str | Path, key: str, overrides: Sequence[str] = ()) -> str:
    """Where the value of dotted ``key`` came from (a YAML file, the command line, or ``defaults``)."""
    data, origin = load_raw(path)
    apply_overrides(data, origin, overrides)
    return _source(origin, key)


def peek_key(path: str | Path, key: str, overrides: Sequence[str] = ()) -> Any:
    """Read one top-level key (e.g. ``family``) after bases and overrides, before choosing a schema."""
    data, origin = load_raw(path)
    apply_overrides(data, origin, overrides)
    return data.get(key)
