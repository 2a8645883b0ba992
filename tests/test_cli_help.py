"""`--help` of every command and subcommand: it works, and it shows each option's help text as
written (rich markup must not swallow ``[grid]``, ``[[sae]]`` or ``ORG/NAME[/SUBFOLDER]``).
Options derived from a config dataclass show the field's docstring and default."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

import vlmsae.core.cli_errors as cli_errors
from vlmsae.cli import app

runner = CliRunner()


def _tree(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _tree(sub, (*path, name))


def _source_tree() -> dict[tuple[str, ...], object]:
    """Every command by path, with its help text as the source wrote it (not escaped)."""
    real = cli_errors.escape_help_markup
    cli_errors.escape_help_markup = lambda command: None
    try:
        return dict(_tree(typer.main.get_command(app)))
    finally:
        cli_errors.escape_help_markup = real


SOURCE = _source_tree()


def _flat(text: str) -> str:
    """Text with the table borders of rich's help and all line breaks gone."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_the_tree_has_every_command():
    names = {" ".join(p) for p in SOURCE}
    assert {"train", "cache", "score", "export", "toyworld build", "demo"} <= names
    assert len(SOURCE) >= 24  # the root, 18 commands, toyworld and its 4


@pytest.mark.parametrize("path", list(SOURCE), ids=lambda p: " ".join(p) or "vlmsae")
def test_help_shows_every_help_text_as_written(path):
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    shown = _flat(res.output)
    command = SOURCE[path]
    texts = [p.help for p in command.params if getattr(p, "help", None)]
    if command.help:
        texts.append(command.help.split("\n\n")[0])  # its first paragraph
    for text in texts:
        assert _flat(text) in shown, f"{text!r} lost in:\n{res.output}"


def test_bracketed_words_survive():
    train = _flat(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output)
    assert "([grid] and / or [[sae]] tables)" in train
    assert "the sweep file's [sweep] table" in train
    export = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "400"})
    assert export.exit_code == 0 and "ORG/NAME[/SUBFOLDER]" in export.output


def test_config_options_show_field_docstrings_and_defaults():
    from vlmsae.core.config_cli import field_docs
    from vlmsae.train.config import TrainConfig

    train = _flat(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output)
    docs = field_docs(TrainConfig)
    assert docs["grad_clip"] in train and "--grad-clip" in train and "[default: 1.0]" in train
    assert docs["threshold_beta"] in train and "[default: 0.999]" in train
    for flag in ("--adam-betas", "--aux-k", "--norm-batches", "--val-rows", "--d-sae"):
        assert flag in train
