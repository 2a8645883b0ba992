"""Command-line options derived from a config dataclass: each default is written once.

A command names the configs it builds and gets one option per field, without restating
them::

    TRAIN = ConfigOptions(TrainConfig, skip=("sae", "progress"))

    @config_options(cfg=TRAIN)
    def train(out: Path = typer.Option(...), *, cfg: ConfigArgs[TrainConfig]) -> None:
        train_sae(..., cfg.build(sae=...))

Each option is ``--field-name`` (or the flag given in ``flags``), its help is the field's
docstring, its default the field's default (``defaults`` gives a CLI-only default where the
field has none that fits the command line). Tuple fields take numbers separated by spaces or
commas; booleans that default to true get ``--x/--no-x``. The command receives a
:class:`ConfigArgs` per config: the values, which of them the user gave, and ``build``.

Built on typer, as every command is (not on a dataclass-to-argparse library such as tyro):
the options sit beside hand-written ones in one command, keep their flag names, and go
through the root group's error handling (:mod:`vlmsae.core.cli_errors`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import typer

from vlmsae.core.cli_errors import user_errors

C = TypeVar("C")
_CTX = "_config_ctx"  # the hidden parameter that receives the click context


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (the string literal after it), as one
    line of plain text (``code`` marks dropped)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = plain_help(nxt.value.value)
    return docs


def plain_help(doc: str) -> str:
    """A docstring as one line of CLI help: whitespace collapsed, ````x```` and
    ``:data:`x``` shown as ``x``."""
    text = re.sub(r"``(.+?)``", r"\1", inspect.cleandoc(doc))
    return " ".join(re.sub(r":\w+:`~?(.+?)`", r"\1", text).split())


@dataclass(frozen=True)
class ConfigArgs(Generic[C]):
    """What a command received for one config: the field values and which were given."""

    cls: type[C]
    """The config class."""
    values: dict[str, Any]
    """Value of each field that has an option (the default where not given)."""
    given: frozenset[str]
    """Fields the user set on the command line (not left at their default)."""

    def build(self, **fixed: Any) -> C:
        """The config from these values and ``fixed`` (fields the command computes); a
        ``ValueError`` of its validation is the user's mistake (one ``Error:`` line)."""
        with user_errors(ValueError):
            return self.cls(**{**self.values, **fixed})


@dataclass(frozen=True)
class ConfigOptions:
    """The options of one config dataclass: every field but ``skip`` (or only ``only``)."""

    cls: type
    """A dataclass whose fields have docstrings."""
    skip: tuple[str, ...] = ()
    """Fields the command sets itself (not options)."""
    only: tuple[str, ...] | None = None
    """Only these fields become options (default: all but ``skip``)."""
    flags: Mapping[str, str] = field(default_factory=dict)
    """Flag of a field whose name on the command line differs (``--normalize/--no-normalize``)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """CLI-only defaults, for fields whose config default does not fit a command line."""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Allowed values of ``str`` fields (shown as ``<a|b>`` and checked by typer)."""
    help: Mapping[str, str] = field(default_factory=dict)
    """Help of a field whose docstring does not read right on the command line."""
    prefix: str = ""
    """Put before every flag and parameter name (``eval``: ``--eval-top-n``), for a nested
    config whose field names repeat the outer one's."""

    def fields(self) -> list[dataclasses.Field]:
        """The fields that become options, in declaration order."""
        names = [f.name for f in dataclasses.fields(self.cls)]
        unknown = set(self.skip) | set(self.only or ()) | set(self.flags) | set(self.defaults)
        if unknown - set(names):
            raise TypeError(f"{self.cls.__name__} has no fields {sorted(unknown - set(names))}")
        return [
            f
            for f in dataclasses.fields(self.cls)
            if f.name not in self.skip and (self.only is None or f.name in self.only)
        ]

    def default(self, f: dataclasses.Field) -> Any:
        """The option's default: the CLI-only one, the field's, or its factory's value."""
        if f.name in self.defaults:
            return self.defaults[f.name]
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        raise TypeError(f"{self.cls.__name__}.{f.name} has no default: skip it or give one")

    def name(self, field_name: str) -> str:
        """The parameter name of a field (its flag without ``--``, with ``_``)."""
        return f"{self.prefix}_{field_name}" if self.prefix else field_name

    def parameters(self) -> list[inspect.Parameter]:
        """One keyword-only typer parameter per field."""
        hints = typing.get_type_hints(self.cls)
        docs = field_docs(self.cls)
        return [
            inspect.Parameter(
                self.name(f.name),
                inspect.Parameter.KEYWORD_ONLY,
                **self._option(f, hints[f.name], self.help.get(f.name, docs.get(f.name, ""))),
            )
            for f in self.fields()
        ]

    def _option(self, f: dataclasses.Field, hint: Any, help_: str) -> dict[str, Any]:
        default = self.default(f)
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        flag = self.flags.get(f.name, "--" + self.name(f.name).replace("_", "-"))
        kw: dict[str, Any] = {"help": help_}
        if typing.get_origin(base) is tuple:  # numbers separated by spaces or commas
            elem = next(a for a in typing.get_args(base) if a is not Ellipsis)
            n = None if Ellipsis in typing.get_args(base) else len(typing.get_args(base))
            kw["parser"] = functools.partial(_parse_tuple, elem=elem, n=n, flag=flag.split("/")[0])
            kw["metavar"] = f"<{elem.__name__} ...>"
            kw["show_default"] = " ".join(str(v) for v in default) if default else False
            annotation: Any = str | None if optional else str
        elif base is bool:
            if default and "/" not in flag:
                flag = f"{flag}/--no-{flag[2:]}"
            annotation = bool
        elif f.name in self.choices:
            annotation = Literal[tuple(self.choices[f.name])]  # type: ignore[valid-type]
            annotation = annotation | None if optional else annotation
        else:
            annotation = hint
        return {"default": typer.Option(default, *flag.split("|"), **kw), "annotation": annotation}


def _parse_tuple(text: Any, *, elem: type, n: int | None, flag: str) -> tuple | None:
    if text is None or isinstance(text, tuple):  # the default, already a tuple
        return text
    try:
        values = tuple(elem(v) for v in re.split(r"[,\s]+", str(text).strip()) if v)
    except ValueError as e:
        raise typer.BadParameter(
            f"{text!r}: give {elem.__name__} numbers separated by spaces or commas, e.g. "
            f"'{'0.9 0.999' if elem is float else '11,17,-1'}'",
            param_hint=flag,
        ) from e
    if n is not None and len(values) != n:
        raise typer.BadParameter(f"{text!r}: give {n} numbers", param_hint=flag)
    return values


def config_options(**groups: ConfigOptions) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options of each config to a typer command; the command's parameter of the
    group's name receives a :class:`ConfigArgs` (``@config_options(cfg=ConfigOptions(X))``)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name not in groups]
        owner: dict[str, tuple[str, str]] = {}  # parameter -> (group, field)
        extra = []
        for group, opts in groups.items():
            if group not in signature.parameters:
                raise TypeError(f"{command.__name__} has no parameter {group!r}")
            for f, param in zip(opts.fields(), opts.parameters(), strict=True):
                if param.name in owner or param.name in signature.parameters:
                    raise TypeError(f"option {param.name!r} of {group!r} is defined twice")
                owner[param.name] = (group, f.name)
                extra.append(param)

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop(_CTX)
            values: dict[str, dict[str, Any]] = {g: {} for g in groups}
            given: dict[str, set[str]] = {g: set() for g in groups}
            for name, (group, field_name) in owner.items():
                values[group][field_name] = kwargs.pop(name)
                if _given(ctx, name):
                    given[group].add(field_name)
            for group, vals in values.items():
                kwargs[group] = ConfigArgs(groups[group].cls, vals, frozenset(given[group]))
            return command(*args, **kwargs)

        ctx_param = inspect.Parameter(
            _CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
        )
        params = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            else p
            for p in own
        ]
        params += [*extra, ctx_param]
        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


def _given(ctx: Any, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
