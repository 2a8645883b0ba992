"""The bridge from config dataclasses to CLI options (core/config_cli.py): every field an
option with its docstring and default, tuples from text, given vs default, errors on one line."""

from __future__ import annotations

from dataclasses import dataclass

import typer
from typer.testing import CliRunner

from vlmsae.core.cli_errors import ErrorReportingGroup
from vlmsae.core.config_cli import ConfigArgs, ConfigOptions, config_options, field_docs

runner = CliRunner()


@dataclass(frozen=True)
class Inner:
    """A nested config."""

    size: int = 3
    """Size of the ``inner`` part, see :data:`Inner`."""


@dataclass(frozen=True)
class Demo:
    """A config."""

    width: int
    """Set by the command."""
    size: int = 7
    """How large [in units]."""
    ratios: tuple[float, ...] | None = None
    """Fractions (sum to 1)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Two numbers."""
    fast: bool = True
    """Go fast."""
    mode: str = "a"
    """Mode a or b."""

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")


def _app(seen: list) -> typer.Typer:
    app = typer.Typer(cls=ErrorReportingGroup)

    @app.command("run")
    @config_options(
        cfg=ConfigOptions(Demo, skip=("width",), choices={"mode": ("a", "b")}),
        inner=ConfigOptions(Inner, prefix="inner"),
    )
    def run(name: str = typer.Option("x"), *, cfg: ConfigArgs[Demo], inner: ConfigArgs[Inner]):
        seen.append((name, cfg, inner, cfg.build(width=2), inner.build()))

    @app.command("other")
    def other() -> None:
        pass

    return app


def test_options_carry_field_values_and_what_was_given():
    seen: list = []
    app = _app(seen)
    res = runner.invoke(app, ["run", "--size", "5", "--ratios", "0.25, 0.75", "--no-fast"])
    assert res.exit_code == 0, res.output
    name, cfg, inner, demo, inner_cfg = seen[-1]
    assert demo == Demo(width=2, size=5, ratios=(0.25, 0.75), fast=False)
    assert cfg.given == {"size", "ratios", "fast"} and inner_cfg == Inner()
    res = runner.invoke(app, ["run", "--betas", "0.5 0.6", "--inner-size", "9", "--mode", "b"])
    assert res.exit_code == 0, res.output
    _, cfg, inner, demo, inner_cfg = seen[-1]
    assert demo == Demo(width=2, betas=(0.5, 0.6), mode="b") and inner_cfg == Inner(size=9)
    assert cfg.given == {"betas", "mode"} and inner.given == {"size"}


def test_bad_values_are_one_error_line():
    app = _app([])
    for args, words in [
        (["--ratios", "0.2,x"], "--ratios"),
        (["--betas", "1 2 3"], "give 2 numbers"),
        (["--mode", "c"], "'c' is not one of"),
        (["--size", "-1"], "size must be >= 0"),  # the config's own check
    ]:
        res = runner.invoke(app, ["run", *args])
        assert res.exit_code == 2, (args, res.output)
        assert words in res.output and "Traceback" not in res.output, res.output


def test_help_is_the_docstring_and_the_default():
    assert field_docs(Inner)["size"] == "Size of the inner part, see Inner."
    res = runner.invoke(_app([]), ["run", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    text = " ".join(res.output.replace("│", " ").split())
    assert "How large [in units]. [default: 7]" in text
    assert "--inner-size" in text and "Size of the inner part" in text
    assert "--fast --no-fast" in text and "<a|b>" in text and "Set by the command" not in text
