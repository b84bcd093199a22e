"""Typer options derived from a pydantic config model, so a config's keys and a command's flags are
written once (the model's fields) and the field docstrings are the ``--help``.

Kept out of ``config`` (no CLI library there: ranks and Ray workers import it) and out of ``cli`` (a
helper, not a command). Imports nothing from the package.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

_Command = TypeVar("_Command", bound=Callable[..., Any])
# Where a value came from when the user gave it (a config file's value must not lose to a flag's default).
# By name: Typer may run its own copy of click, whose ParameterSource is not click's.
_GIVEN = ("COMMANDLINE", "ENVIRONMENT")
# The parameter through which Typer hands the wrapper its context (Typer fills a typer.Context one).
_CTX = "_options_ctx"


def _option(field: FieldInfo, envvar: str | None) -> Any:
    doc = " ".join((field.description or "").replace("``", "").split())  # RST literals read plainly in --help
    if field.is_required():  # may come from a config file instead: validation says when it is missing
        return typer.Option(None, help=f"{doc} (required)", envvar=envvar, show_default=False)
    return typer.Option(field.get_default(call_default_factory=True), help=doc, envvar=envvar)


def options_from(model_type: type[BaseModel], *, into: str = "flags",
                 envvars: Mapping[str, str] | None = None) -> Callable[[_Command], _Command]:
    """Decorator of a Typer command (put it under ``@app.command()``): every field of ``model_type``
    becomes an option named after it (``max_new_tokens``: ``--max-new-tokens``; a bool:
    ``--x/--no-x``; a list: repeatable), its docstring the help, its default shown. Required fields come
    first, then the model's order, then the command's own parameters. The command's parameter ``into``
    receives a dict of the options the user gave (command line or ``envvars``: field -> variable), and
    only those, so it can layer them over a config file and overrides (config.load_yaml_config)."""
    fields = sorted(model_type.model_fields.items(), key=lambda item: not item[1].is_required())
    envvars = dict(envvars or {})
    unknown = sorted(set(envvars) - set(model_type.model_fields))
    if unknown:
        raise TypeError(f"envvars name no field of {model_type.__name__}: {unknown}")

    def decorate(command: _Command) -> _Command:
        own = inspect.signature(command, eval_str=True).parameters
        if into not in own:
            raise TypeError(f"{command.__name__} has no parameter {into!r} to receive the options")
        clash = sorted(set(own) & set(model_type.model_fields))
        if clash:
            raise TypeError(f"{command.__name__}'s parameters {clash} are fields of {model_type.__name__}")
        # Keyword-only, so the derived and the command's own parameters may come in any order.
        params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=field.annotation,
                                    default=_option(field, envvars.get(name))) for name, field in fields]
        params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in own.items() if name != into]
        params.append(inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        def with_options(**kwargs: Any) -> Any:
            ctx = kwargs.pop(_CTX)
            given = {name: kwargs.pop(name) for name in model_type.model_fields}
            given = {name: value for name, value in given.items()
                     if getattr(ctx.get_parameter_source(name), "name", None) in _GIVEN}
            return command(**kwargs, **{into: given})

        # Typer reads the command from these: its name, help, and the parameters built above.
        with_options.__name__, with_options.__qualname__ = command.__name__, command.__qualname__
        with_options.__module__, with_options.__doc__ = command.__module__, command.__doc__
        with_options.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in params}
        return with_options  # type: ignore[return-value]

    return decorate
