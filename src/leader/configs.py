"""Typed configurations: one dataclass per model and one for training, in the spirit of peft's.

A config is a plain dataclass whose fields carry their own help text and limits
(:func:`option`), so the model, its saved ``model.json`` and the command line all read the same
defaults and nothing is typed twice. :meth:`Config.from_dict` loads a saved config back: missing
keys take today's defaults (a bundle from an older version still loads), unknown keys are
refused with one line (a bundle from a newer version, or a typo in ``--config``), and an old
layout can be rewritten first by a subclass's :meth:`Config.upgrade`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Self

from leader.errors import LeaderError


class ConfigError(LeaderError):
    """A bad value of one config field; ``field`` lets the CLI name its flag instead."""

    def __init__(self, field: str, message: str, where: str | None = None):
        self.field = field
        self.detail = message
        self.where = where
        super().__init__(f"{where}: {field}: {message}" if where else f"{field}: {message}")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    cli: bool = True,
    flag: str | None = None,
    identity: bool = True,
) -> Any:
    """A config field with its help text and limits.

    ``cli=False`` keeps a field off the command line (derived values, lists); ``flag`` names
    its option when the field's name reads badly as one (``use_profile`` → ``--profile``);
    ``identity=False`` marks a field that does not change results (a batch size for scoring),
    so a run may resume with it changed.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "choices": choices, "cli": cli,
            "flag": flag, "identity": identity}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without ``| None``, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """A JSON value as the field's type; a wrong type is a :class:`ConfigError`."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(name, "expected a value, got null")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(name, f"expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(name, f"expected a whole number, got {value!r}")
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(name, f"expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(name, f"expected a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, f"expected a string, got {value!r}")
    if typing.get_origin(base) in (list, tuple):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(name, f"expected a list of strings, got {value!r}")
        return typing.get_origin(base)(value)
    return value


@dataclasses.dataclass
class Config:
    """Base of every config: JSON round trip, limits checked on construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                continue
            value = _coerce(f.name, value, _hints(type(self))[f.name])
            setattr(self, f.name, value)
            if value is not None:  # None is "not set" (checked by _coerce), never out of range
                _check_limits(f, value)
        self.validate()

    def validate(self) -> None:
        """Rules between fields; raise :class:`ConfigError` naming the field."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that change results (what a resumed run must share)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata.get("identity", True):
                continue
            out[f.name] = value.identity() if isinstance(value, Config) else value
        return out

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    @classmethod
    def upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Rewrite a config saved in an older layout (override where a layout changed)."""
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str | None = None) -> Self:
        """Build from JSON; ``where`` (a file) prefixes error messages."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise LeaderError(
                f"{where or 'config'}: expected an object of settings, got {type(raw).__name__}"
            )
        raw = cls.upgrade(dict(raw))
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise LeaderError(
                f"{where or 'config'}: unknown setting {unknown[0]!r} for {cls.__name__} "
                f"(known: {', '.join(known)}); was it written by a newer leader?"
            )
        values = {}
        defaults = cls()
        for name, value in raw.items():
            tp = _hints(cls)[name]
            if isinstance(tp, type) and issubclass(tp, Config):
                base = getattr(defaults, name)
                if isinstance(value, Mapping):  # a partial nested config keeps this default's rest
                    value = {**base.to_dict(), **value}
                values[name] = tp.from_dict(value, where)
            else:
                values[name] = value
        try:
            return dataclasses.replace(defaults, **values)
        except ConfigError as e:
            raise ConfigError(e.field, e.detail, e.where or where) from None

    @classmethod
    def flat_fields(cls) -> list[tuple[str | None, dataclasses.Field, Any, Any]]:
        """(nested config name or None, field, default, type) for every field, one level deep.

        The command line shows the fields of a model's config and of its ``train`` config side
        by side, with the model's own defaults (a teacher trains 3 epochs, a student 50).
        """
        defaults = cls()
        out: list[tuple[str | None, dataclasses.Field, Any, Any]] = []
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            if isinstance(value, Config):
                hints = _hints(type(value))
                out += [(f.name, g, getattr(value, g.name), hints[g.name])
                        for g in dataclasses.fields(value)]
            else:
                out.append((None, f, value, _hints(cls)[f.name]))
        return out


def _check_limits(f: dataclasses.Field, value: Any) -> None:
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f.name, f"expected one of {', '.join(m['choices'])}, got {value!r}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if m.get("ge") is not None and value < m["ge"]:
        raise ConfigError(f.name, f"expected a number >= {m['ge']:g}, got {value:g}")
    if m.get("gt") is not None and value <= m["gt"]:
        raise ConfigError(f.name, f"expected a number > {m['gt']:g}, got {value:g}")
    if m.get("le") is not None and value > m["le"]:
        raise ConfigError(f.name, f"expected a number <= {m['le']:g}, got {value:g}")
