"""Typed configuration: frozen dataclasses, their JSON form, and command-line options made
from them.

The convention follows sparsify's and saev's configs: one frozen dataclass per thing, each
default written once on its field, and a one-line docstring under every field, which is also
the field's ``--help`` text. This module is generic (it knows no probe_sae config) and imports
nothing from the package.

* :func:`to_dict` / :func:`from_dict`: a config and its JSON-ready dict, both ways, with the
  values checked against the field types (``from_dict(C, to_dict(c)) == c``).
* :func:`field_docs`: the field docstrings of a config class.
* :func:`add_options` / :func:`parse_value`: ``--field-name`` options for the fields of one or
  several config classes, for ``argparse``.

A config class that stands for a family of subclasses (the SAE configs) sets the class
attribute ``TAG_FIELD`` to the key that names the subclass in its dict (``"family"``), keeps
the subclass's name in the class attribute of that name, and implements the classmethod
``tagged(tag) -> type``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Literal, TypeVar, Union

C = TypeVar("C")

#: how ``None`` is written on the command line for fields that may be unset
NONE_WORDS = ("none", "null")
#: the words a command line may give an optional bool (``--prefetch true``)
BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class ConfigError(ValueError):
    """A config value or key that does not fit its dataclass; the message names the field."""


# ----------------------------------------------------------------------------- field docs
@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its docstring}`` for a dataclass and its dataclass bases (the string
    literal written right under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        statements = body.body
        for node, after in zip(statements, [*statements[1:], None], strict=True):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def config_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields a config is built from (``init=True``), in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.init]


@cache
def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in config_fields(cls)}


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (``dataclasses.MISSING`` when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# --------------------------------------------------------------------------- dict / JSON
def to_dict(config: Any) -> dict[str, Any]:
    """A config as a JSON-ready dict: nested configs become dicts, tuples become lists, and a
    tagged family's dict starts with its tag (e.g. ``{"family": "topk", ...}``)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"to_dict takes a config dataclass instance, got {type(config).__name__}")
    out: dict[str, Any] = {}
    tag = getattr(type(config), "TAG_FIELD", None)
    if tag is not None:
        out[tag] = getattr(type(config), tag)
    for f in config_fields(type(config)):
        out[f.name] = _jsonable(getattr(config, f.name))
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def replace_fields(config: C, fields: Mapping[str, Any]) -> C:
    """``config`` with ``fields`` changed; an unknown name raises :class:`ConfigError` listing
    the config's fields (a typo never passes silently)."""
    if not fields:
        return config
    known = {f.name for f in config_fields(type(config))}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(
            f"{type(config).__name__} has no field(s) {unknown}; its fields are {sorted(known)}"
        )
    return dataclasses.replace(config, **fields)  # type: ignore[type-var]


def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
    """Build the config ``cls`` from a dict (e.g. read from JSON), checking every value.

    Unknown keys, missing required keys and values of the wrong type raise
    :class:`ConfigError` naming the field (``where`` prefixes the names, e.g. ``"train."``).
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected an object, got {data!r}")
    data = dict(data)
    tag = getattr(cls, "TAG_FIELD", None)
    if tag is not None:
        name = data.pop(tag, None)
        if name is None:
            raise ConfigError(f"{where or cls.__name__}: missing {tag!r}")
        cls = cls.tagged(name)  # type: ignore[attr-defined]
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown field(s) {unknown} for {cls.__name__}; "
            f"its fields are {sorted(types_)}"
        )
    values = {
        name: coerce(types_[name], value, f"{where}{name}") for name, value in data.items()
    }
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` (a JSON value or a Python one) as the type ``tp``, or :class:`ConfigError`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{where}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)}")
        return tuple(coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        value_type = args[1] if args else Any
        return {str(k): coerce(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


# ------------------------------------------------------------------------- command line
def parse_value(tp: Any, text: str, where: str) -> Any:
    """A command-line word as the type ``tp`` (``none`` for an unset optional field, comma
    separated values for a tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if text.lower() in NONE_WORDS and type(None) in args:
            return None
        # str accepts any word, so it is tried last: "0,5,6" is a tuple, "patches" a str
        options = sorted((a for a in args if a is not type(None)), key=lambda a: a is str)
        for option in options:
            try:
                return parse_value(option, text, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {text!r} as a {_type_name(tp)}")
    if origin is tuple:
        parts = [p for p in text.split(",") if p.strip()]
        item_types = [args[0]] * len(parts) if args[-1] is Ellipsis else list(args)
        if len(parts) != len(item_types):
            raise ConfigError(f"{where}: expected {len(item_types)} comma-separated values")
        return tuple(parse_value(t, p.strip(), where) for t, p in zip(item_types, parts, strict=True))
    if origin is Literal:
        if text in args:
            return text
        raise ConfigError(f"{where}: {text!r} is not one of {list(args)}")
    if tp is bool:
        if text.lower() in BOOL_WORDS:
            return BOOL_WORDS[text.lower()]
        raise ConfigError(f"{where}: {text!r} is not one of {sorted(BOOL_WORDS)}")
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{where}: cannot read {text!r} as a {_type_name(tp)}") from None
    if tp is str:
        return text
    raise ConfigError(f"{where}: a {_type_name(tp)} cannot be set from the command line")


def option_name(field_name: str) -> str:
    """``n_concepts`` → ``--n-concepts``."""
    return "--" + field_name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Option:
    """One generated command-line option and the config fields it sets."""

    name: str
    type: Any
    owners: tuple[type, ...]


def add_options(
    group: argparse._ActionsContainer,
    classes: Iterable[type],
    skip: Iterable[str] = (),
    owner_names: Mapping[type, str] | None = None,
    nested: bool = True,
) -> dict[str, Option]:
    """Add a ``--field-name`` option to ``group`` for every field of ``classes``, one option
    per field name; returns them by field name. Fields holding a config are flattened into
    that config's fields, or skipped with ``nested=False`` (pass the nested class instead).

    An option is absent from the parsed namespace unless given (``default=SUPPRESS``), so it
    overrides a config only when the user wrote it. Its help is the field's docstring, its
    default, and, when ``owner_names`` is given, which classes have the field.
    """
    skipped = set(skip)
    found: dict[str, Option] = {}
    docs: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    for cls in classes:
        for name, tp, doc, default in _leaf_fields(cls, nested):
            if name in skipped:
                continue
            if name in found:
                if found[name].type != tp:
                    raise TypeError(f"field {name!r} has two types: {found[name].type}, {tp}")
                found[name] = dataclasses.replace(found[name], owners=(*found[name].owners, cls))
                continue
            found[name] = Option(name, tp, (cls,))
            docs[name], defaults[name] = doc, default
    for name, option in found.items():
        help_text = docs[name] or name
        if defaults[name] is not dataclasses.MISSING:
            help_text += f" (default: {_show(defaults[name])})"
        if owner_names:
            help_text += f" [{', '.join(owner_names[c] for c in option.owners)}]"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        if option.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _parser(option.type, option_name(name))
            kwargs["metavar"] = _metavar(option.type)
        group.add_argument(option_name(name), dest=name, **kwargs)
    return found


def _leaf_fields(cls: type, flatten: bool = True) -> list[tuple[str, Any, str, Any]]:
    """(name, type, doc, default) of ``cls``'s fields; nested config fields are flattened
    (or left out)."""
    out = []
    docs, types_ = field_docs(cls), field_types(cls)
    for f in config_fields(cls):
        nested = _nested_config(types_[f.name])
        if nested is not None:
            if flatten:
                out.extend(_leaf_fields(nested))
        else:
            out.append((f.name, types_[f.name], docs.get(f.name, ""), default_of(f)))
    return out


def _nested_config(tp: Any) -> type | None:
    """The config class inside ``tp`` (``X`` or ``X | None`` with ``X`` a dataclass)."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if len(inner) == 1 else None
    return None


def _parser(tp: Any, flag: str) -> Any:
    def read(text: str) -> Any:
        try:
            return parse_value(tp, text, flag)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    read.__name__ = _type_name(tp)
    return read


def _metavar(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in (Union, types.UnionType):
        return "|".join(_metavar(a) if a is not type(None) else "none" for a in args)
    if origin is tuple:
        return "A,B" if args[-1] is not Ellipsis else "A,B,..."
    return _type_name(tp).upper()


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)
