"""Settings declared once: a dataclass field per setting, its default and help; flags come from it.

Every command's settings are dataclasses whose fields are made with :func:`setting`. The command
line flags (``--max-steps`` for ``max_steps``) and the keys of a ``--config run.yaml`` file are
generated from those fields, so a setting has one name, one default and one help text. A field
whose type is itself a settings dataclass is nested (``PretrainSettings.train``): its flags are
those of the nested class, with the defaults the outer class gives it. Precedence: the field's
default, then the config file, then the command line.

:class:`Runtime` (``--device``, ``--precision``, ``--no-progress``) is declared here, below every
layer whose commands run a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pretune.errors import PretuneError

_MISSING = dataclasses.MISSING
_hints = functools.cache(typing.get_type_hints)  # a settings class's field types, evaluated once


Check = Callable[[Any], "str | None"]
"""A value's range: ``check(value)`` is None when the value is fine, else what it must be ("must be at least 1")."""


def at_least(minimum: float) -> Check:
    """Values ``>= minimum`` (sizes, counts)."""
    return lambda v: None if v >= minimum else f"must be at least {minimum:g}"


def positive(v: float) -> str | None:
    """Values ``> 0`` (rates, durations)."""
    return None if v > 0 else "must be positive"


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """Values in an interval, e.g. a fraction strictly between 0 and 1."""
    def check(v: float) -> str | None:
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        bounds = {(True, True): "both exclusive", (True, False): f"{low:g} exclusive",
                  (False, True): f"{high:g} exclusive", (False, False): "inclusive"}[(low_open, high_open)]
        return None if ok else f"must be between {low:g} and {high:g} ({bounds})"
    return check


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    positional: bool = False,
    negate: bool = False,
    parse: Callable[[Any], Any] | None = None,
    factory: Callable[[], Any] | None = None,
    check: Check | None = None,
) -> Any:
    """A settings field. ``flag`` overrides the generated ``--field-name``; ``negate`` makes a
    boolean that defaults to True a ``--no-...`` switch; ``parse`` turns the command-line value
    into the field's value (e.g. ``--set a=1`` into a dict); ``check`` states the values allowed
    (:func:`at_least`, :func:`positive`, :func:`between`), checked before any work with the flag
    named in the message (:func:`check_ranges`)."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "positional": positional, "negate": negate, "parse": parse,
            "check": check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nested(factory: Callable[[], Any], *, exclude: tuple[str, ...] = ()) -> Any:
    """A nested settings dataclass (its defaults given by ``factory``); ``exclude`` hides fields
    the outer command sets itself."""
    return dataclasses.field(default_factory=factory, metadata={"nested": True, "exclude": exclude})


@dataclasses.dataclass(frozen=True)
class Option:
    """One flag: where its value goes, its type and its default."""

    path: tuple[str, ...]  # field names from the outer settings class down
    flag: str
    type: Any
    default: Any
    field: dataclasses.Field

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def key(self) -> str:
        """The name in a config file (the flag without dashes, ``_`` or ``-`` both accepted)."""
        return self.flag.lstrip("-").replace("-", "_")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def options(cls: type, instance: Any = None, path: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Iterator[Option]:
    """The flags of a settings class, nested classes included (defaults from ``instance``)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        default = getattr(instance, f.name) if instance is not None else _default(f)
        if f.metadata.get("nested"):
            yield from options(hints[f.name], default, (*path, f.name), tuple(f.metadata.get("exclude", ())))
        elif "help" in f.metadata:
            name = f.name.replace("_", "-")
            flag = f.metadata.get("flag") or (f"--no-{name}" if f.metadata.get("negate") else f"--{name}")
            yield Option((*path, f.name), flag, hints[f.name], default, f)


# --------------------------------------------------------------------------------------------
# Types


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _scalar(tp: Any) -> tuple[Callable[[Any], Any] | None, list[Any] | None]:
    """A converter and the choices of a scalar type (int, float, str, Literal)."""
    if typing.get_origin(tp) is Literal:
        values = list(typing.get_args(tp))
        return type(values[0]), values
    if tp in (int, float, str):
        return tp, None
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # e.g. int | str: keep the text
        return None, None
    return None, None


def _describe(opt: Option) -> dict[str, Any]:
    """argparse keyword arguments for an option."""
    tp, _ = _unwrap_optional(opt.type)
    meta = opt.field.metadata
    kw: dict[str, Any] = {"dest": opt.dest, "default": argparse.SUPPRESS, "metavar": meta.get("metavar") or opt.path[-1].upper()}
    if tp is bool:
        kw.update(action="store_false" if meta.get("negate") else "store_true")
        kw.pop("metavar")
        return kw
    if meta.get("parse"):  # free-form values the field's parser reads (e.g. --set a=1 b=2)
        kw.update(nargs="*")
        return kw
    if typing.get_origin(tp) in (list, tuple):
        item = typing.get_args(tp)[0] if typing.get_args(tp) else str
        conv, choices = _scalar(item)
        kw.update(nargs="+", type=conv, choices=choices)
        return kw
    conv, choices = _scalar(tp)
    kw.update(type=conv, choices=choices)
    if choices is not None and not meta.get("metavar"):
        kw.pop("metavar")  # argparse shows the choices
    return kw


def _help(opt: Option) -> str:
    text = opt.field.metadata["help"]
    tp, _ = _unwrap_optional(opt.type)
    if opt.default is _MISSING or tp is bool or opt.default in (None, [], {}, ""):
        return text.replace("%", "%%")
    shown = " ".join(map(str, opt.default)) if isinstance(opt.default, (list, tuple)) else opt.default
    return f"{text} (default: {shown})".replace("%", "%%")


def _group(parser: argparse.ArgumentParser, groups: dict, cls: type, path: tuple[str, ...]) -> Any:
    """The argument group of a nested settings class (titled by its docstring), or the parser."""
    if len(path) == 1:
        return parser
    owner = cls
    for name in path[:-1]:
        owner = _hints(owner)[name]
    if owner not in groups:
        title = (owner.__doc__ or owner.__name__).strip().splitlines()[0].rstrip(".")
        groups[owner] = parser.add_argument_group(title[0].lower() + title[1:])
    return groups[owner]


def add_options(parser: argparse.ArgumentParser, cls: type, instance: Any = None) -> list[Option]:
    """Add a flag for every setting of ``cls`` (and ``--config``); returns the options."""
    opts = list(options(cls, instance))
    groups: dict = {}
    for opt in opts:
        kw = _describe(opt)
        target = _group(parser, groups, cls, opt.path)
        if opt.field.metadata.get("positional"):
            kw.pop("dest")
            kw["nargs"] = "*"
            target.add_argument(opt.dest, help=_help(opt), **{k: v for k, v in kw.items() if k != "default"},
                                default=argparse.SUPPRESS)
        else:
            target.add_argument(opt.flag, help=_help(opt), **{k: v for k, v in kw.items() if v is not None})
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings, keyed by flag name (flags given here win)")
    parser.set_defaults(_settings=(cls, instance, opts))
    return opts


def add_command(sub: argparse._SubParsersAction, name: str, cls: type, run: Callable[[Any], int], *, help: str,
                description: str | None = None) -> argparse.ArgumentParser:
    """A (sub-)command whose flags come from ``cls`` and whose work is ``run(settings)``."""
    parser = sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".")
    add_options(parser, cls)
    parser.set_defaults(run=run)
    return parser


# --------------------------------------------------------------------------------------------
# Values: defaults <- config file <- command line


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A run config (YAML or JSON) mapping flag names to values."""
    from pretune.config import read_json

    path = Path(path)
    if not path.is_file():
        raise PretuneError(f"--config {path}: no such file")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise PretuneError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    else:
        data = read_json(path)
    if not isinstance(data, dict):
        raise PretuneError(f"{path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(opt: Option, value: Any, where: str) -> Any:
    """A config-file value checked and converted like the command line would."""
    tp, optional = _unwrap_optional(opt.type)
    if value is None:
        if optional:
            return None
        raise PretuneError(f"{where}: {opt.key} cannot be empty")
    if tp is bool:
        if not isinstance(value, bool):
            raise PretuneError(f"{where}: {opt.key} must be true or false, got {value!r}")
        return (not value) if opt.field.metadata.get("negate") else value
    if typing.get_origin(tp) in (list, tuple):
        items = value if isinstance(value, list) else [value]
        item_tp = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return [_convert(item_tp, v, opt, where) for v in items]
    return _convert(tp, value, opt, where)


def _convert(tp: Any, value: Any, opt: Option, where: str) -> Any:
    conv, choices = _scalar(tp)
    try:
        out = conv(value) if conv is not None and not isinstance(value, bool) else value
    except (TypeError, ValueError):
        raise PretuneError(f"{where}: {opt.key} must be {getattr(tp, '__name__', tp)}, got {value!r}") from None
    if conv is int and isinstance(value, float) and value != int(value):
        raise PretuneError(f"{where}: {opt.key} must be a whole number, got {value!r}")
    if choices is not None and out not in choices:
        raise PretuneError(f"{where}: {opt.key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return out


def values_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings' values given on the command line and in ``--config`` (command line wins)."""
    _, _, opts = args._settings
    given = {opt.dest: getattr(args, opt.dest) for opt in opts if hasattr(args, opt.dest)}
    config = getattr(args, "config", None)
    if config:
        by_key = {opt.key: opt for opt in opts}
        for key, value in read_config_file(config).items():
            if key not in by_key:
                raise PretuneError(f"{config}: unknown setting {key!r}; valid: {', '.join(sorted(by_key))}")
            opt = by_key[key]
            given.setdefault(opt.dest, _coerce(opt, value, str(config)))
    return given


def build(cls: type, values: dict[str, Any], instance: Any = None) -> Any:
    """An instance of ``cls`` from its defaults (or ``instance``) with ``values`` (dotted paths) set."""
    base = instance if instance is not None else None
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        current = getattr(base, f.name) if base is not None else _default(f)
        if f.metadata.get("nested"):
            inner = {k[len(f.name) + 1 :]: v for k, v in values.items() if k.startswith(f.name + ".")}
            kwargs[f.name] = build(hints[f.name], inner, current)
        elif f.name in values:
            parse = f.metadata.get("parse")
            kwargs[f.name] = parse(values[f.name]) if parse else values[f.name]
        elif current is not _MISSING:
            kwargs[f.name] = current
    return cls(**kwargs)


def settings_from(args: argparse.Namespace) -> Any:
    """The settings object of a parsed command line (with its ``--config``), its values' ranges checked."""
    cls, instance, _ = args._settings
    settings = build(cls, values_from(args), instance)
    check_ranges(settings)
    return settings


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def check_ranges(settings: Any) -> None:
    """Every value against its field's ``check``, nested settings included: the first value out of
    range is a :class:`PretuneError` naming its flag, e.g. ``--validation-split must be between 0
    and 1 (both exclusive), got 1.5``."""
    for opt in options(type(settings), settings):
        check = opt.field.metadata.get("check")
        value = settings
        for name in opt.path:
            value = getattr(value, name)
        if check is None or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            problem = check(item)
            if problem:
                name = opt.path[-1].upper() if opt.field.metadata.get("positional") else opt.flag
                raise PretuneError(f"{name} {problem}, got {_shown(item)}")


def require(settings: Any, *names: str) -> None:
    """Refuse to run without the settings a command needs, naming their flags (or, for positional
    arguments, what to give)."""
    for name in names:
        if getattr(settings, name) in (None, "", []):
            f = {f.name: f for f in dataclasses.fields(settings)}[name]
            if f.metadata.get("positional"):
                raise PretuneError(f"no {name.upper()} given: {f.metadata['help']}")
            raise PretuneError(f"--{name.replace('_', '-')} is required (on the command line or in --config)")


def to_dict(settings: Any) -> dict[str, Any]:
    """Plain JSON-ready values of a settings object (for results files)."""
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))


# --- where a model runs: the settings of every command that runs one ----------------------------

Precision = Literal["auto", "fp32", "bf16"]


def device_name(value: str) -> str | None:
    """A ``--device`` value torch knows (a check for :func:`setting`)."""
    return None if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) else "must be auto, cpu, cuda or cuda:N"


@dataclasses.dataclass
class Runtime:
    """Where and how a model runs."""

    device: str = setting("auto", check=device_name, help="auto, cpu, cuda or cuda:N")
    precision: Precision = setting(
        "auto", help="auto: bf16 autocast where this machine computes it faster (CUDA; a CPU with AMX or "
        "AVX512-BF16 that measures faster), else fp32")
    progress: bool = setting(True, negate=True, help="no progress bars")


__all__ = ["Check", "Option", "Precision", "Runtime", "add_command", "add_options", "at_least", "between", "build", "check_ranges",
           "device_name", "nested", "options", "positive", "read_config_file", "require", "setting", "settings_from", "to_dict",
           "values_from"]
