"""Command-line options made from a config dataclass, so no default or help text is typed twice.

:func:`config_options` adds one option per field of a model's config (and of its ``train``
config) to a typer command and hands the command a built config instead. Every option defaults
to "not given", so a ``--config FILE`` (e.g. from ``leader tune``) supplies the rest and the
options given on the line win; help shows the model's own default.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from leader.configs import Config, _base_type
from leader.errors import LeaderError

# field name -> flag, so that a library error about a field names the flag the user typed
FLAGS: dict[str, str] = {}


def flag_for(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _option(
    name: str, f: dataclasses.Field, default: Any, tp: Any, shown: str | None = None
) -> inspect.Parameter:
    base, _ = _base_type(tp)
    flag = "--" + (f.metadata.get("flag") or name).replace("_", "-")
    FLAGS[name] = flag
    if shown is None:
        shown = ("none" if default is None else str(default).lower() if base is bool
                 else str(default))
    decls = [f"{flag}/--no-{flag[2:]}"] if base is bool else [flag]
    choices = f.metadata.get("choices")
    help_text = f.metadata.get("help", "") + (f" ({', '.join(choices)})" if choices else "")
    opt = typer.Option(*decls, help=help_text, show_default=shown)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[base | None, opt])


def config_options(
    cls: type[Config], build: bool = True, config_file: bool = True
) -> Callable[[Callable], Callable]:
    """Give a command ``--FIELD`` options for ``cls`` and a ``--config FILE``; the command gets
    the built config as its ``config`` argument (``build=False``: the settings given, as a dict
    to merge into another config, whose defaults the help then names as the model's own;
    ``config_file=False``: no ``--config``)."""
    fields = [row for row in cls.flat_fields() if row[1].metadata.get("cli", True)]
    names = [f.name for _, f, _, _ in fields]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: a field name repeats between the config and train")
    nested = {f.name: nest for nest, f, _, _ in fields}

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        resolved = typing.get_type_hints(command, include_extras=True)  # the command's own names
        params = [p.replace(annotation=resolved.get(p.name, p.annotation))
                  for p in signature.parameters.values() if p.name != "config"]
        shown = None if build else "the model's own"
        added = [_option(f.name, f, d, tp, shown) for _, f, d, tp in fields]
        file_option = inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Path | None, typer.Option(
                "--config", help="JSON settings (e.g. from `leader tune`); options given here "
                "win.", show_default=False)],
        )

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            raw = read_config_file(kwargs.pop("config_file", None))
            for name, value in given.items():
                if value is None:
                    continue
                if nested[name]:
                    raw.setdefault(nested[name], {})[name] = value
                else:
                    raw[name] = value
            return command(config=cls.from_dict(raw) if build else raw, **kwargs)

        extra = [file_option] if config_file else []
        everything = [*params, *added, *extra]
        wrapper.__signature__ = signature.replace(parameters=everything)
        wrapper.__annotations__ = {p.name: p.annotation for p in everything}
        return wrapper

    return decorate


def read_config_file(path: Path | None) -> dict[str, Any]:
    """A ``--config`` file: a JSON object of settings (a bundle's ``model.json`` works too)."""
    if path is None:
        return {}
    if not path.exists():  # a pipe (`--config <(jq ...)`) is no regular file but reads
        raise LeaderError(f"--config {path}: file not found")
    if path.is_dir():
        raise LeaderError(f"--config {path}: a directory, expected a JSON file")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LeaderError(f"--config {path}: not valid JSON ({str(e)[:120]})") from None
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict) and (
        "name" in raw or "model" in raw
    ):
        raw = raw["config"]  # a bundle's model.json, or a `leader tune` result
    if not isinstance(raw, dict):
        raise LeaderError(f"--config {path}: expected a JSON object of settings")
    return raw


# the decision rule, the same three commands take it (train-teacher, distill, train-baseline)
Threshold = Annotated[float | None, typer.Option(
    help="Fixed decision threshold (default: tuned on validation, the best mean F1).",
    show_default=False)]
MaxDrugs = Annotated[int | None, typer.Option(
    help="Recommend at most this many drugs per visit.", show_default=False)]
Calibration = Annotated[str, typer.Option(
    "--calibration", help="Calibrate the probabilities on validation: none, temperature (one T "
    "per model) or isotonic (per class where validation has enough visits, else temperature).")]
