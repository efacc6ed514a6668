"""Validated configuration: YAML files loaded into dataclasses, plus `key=value` overrides.

Precedence (lowest to highest): dataclass defaults < YAML file(s) < command-line overrides.
Every error is a one-line `ConfigError` naming the file, the dotted key and the expected type,
so a typo in a YAML file fails before anything runs or is submitted.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, worded so the user knows what to change."""


class NotPrepared(ConfigError):
    """A model or dataset is not on this machine (jobs run offline); the message names the prepare command."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(get_args(tp)[0])}" if get_args(tp) else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the type hint `tp`; return it (ints widen to float). Raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: expected one of {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # already built (and validated) by its own constructor
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected bool (true/false), got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got bool {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} for {cls.__name__} (allowed: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _coerce(_onto_field_default(fields[k], v), hints[k], f"{where}.{k}" if where else k)
              for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where and not str(err).startswith(where) else str(err)) from None
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where}: {err}") from None


def _onto_field_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a dataclass-valued field completes from that field's own default, not from the nested
    class's: `optim: {lr: 1e-4}` in a MiniLLM stage keeps MiniLLM's reference betas and weight decay instead of
    falling back to OptimConfig's (the SFT ones)."""
    if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        if dataclasses.is_dataclass(default):
            return merge(to_dict(default), value)
    return value


def from_dict(cls: type[T], data: dict, source: str = "<dict>") -> T:
    """Build dataclass `cls` from a plain mapping; `source` names the origin in error messages."""
    try:
        return _build(cls, data, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {str(err).lstrip(': ')}") from None


MAX_CONFIG_BYTES = 1_000_000  # a config file is a few kB; anything near this is not one
MAX_ALIASES = 100  # YAML aliases a config may use (an alias bomb expands exponentially when merged)


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses more than MAX_ALIASES aliases."""

    aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases (refused: alias expansion)")
        return super().compose_node(parent, index)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing, empty, binary, oversized or malformed file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = path.read_bytes()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(raw):,} bytes, too large for a config file (at most {MAX_CONFIG_BYTES:,})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a config file holds YAML") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); a config file holds YAML")
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        raise ConfigError(f"{path}: is empty; a config file holds a YAML mapping of keys")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load `cls` from a YAML file, then apply `key=value` overrides (dotted keys for nesting)."""
    data = read_yaml(path)
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    # YAML reads "1e-4" as a string; numbers in scientific notation are common in configs.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `a.b.c=value` override set (value parsed as YAML)."""
    data = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a mapping")
        node[keys[-1]] = value
    return data


def merge(base: dict, top: dict) -> dict:
    """Recursive dict merge: values in `top` win; nested mappings merge."""
    out = _deep_copy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = _deep_copy(v)
    return out


def to_dict(obj: Any) -> Any:
    """Dataclass tree to plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition`; used in dataclass __post_init__ validators."""
    if not condition:
        raise ConfigError(message)


# ------------------------------------------------------------------------------------------ command lines
def add_arguments(parser, cls: type, *, skip: tuple[str, ...] = (), flags: dict[str, str] | None = None) -> None:
    """One `--option` per field of dataclass `cls`, its help taken from the field's `metadata["help"]`, so a command
    line, a YAML file and the docs spell each option once. Values stay strings until `from_arguments` checks them.
    flags: a different flag for a field (e.g. {"output_dir": "--out"})."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = (flags or {}).get(f.name, "--" + f.name.replace("_", "-"))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = f"{f.metadata.get('help', '')} (default: {shown})".strip()
        if hints[f.name] is bool:
            import argparse

            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=_type_name(hints[f.name]).upper()
                                if get_origin(hints[f.name]) is not list else "A,B,...", help=text)


def from_arguments(cls: type[T], args, base: dict | None = None, source: str = "command line") -> T:
    """Build `cls` from `base` (e.g. a YAML file's mapping) updated with the options given on the command line
    (comma lists split; numbers, booleans and null parsed as YAML). Errors are one-line ConfigErrors."""
    hints = typing.get_type_hints(cls)
    data = dict(base or {})
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if get_origin(hints[f.name]) is list and isinstance(value, str):
            value = [_parse_scalar(v.strip()) for v in value.split(",") if v.strip()]
        elif isinstance(value, str):
            value = _parse_scalar(value)
        data[f.name] = value
    return from_dict(cls, data, source)


def _parse_scalar(text: str) -> Any:
    _, value = parse_override(f"x={text}")
    return value
