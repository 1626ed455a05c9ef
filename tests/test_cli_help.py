"""Every command's --help renders whole: rich reads ``[...]`` in a help text as markup and drops
it, which once left "model ." where a default was named; and shown defaults are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leader.cli import _register, app


def help_text(*command: str) -> str:
    _register()
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def commands() -> list[str]:
    _register()
    import typer.main

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", commands())
def test_help_loses_no_text_to_markup(command):
    text = help_text(command)
    assert not re.search(r"\w \.(\s|$)", text), re.search(r".{40}\w \.(\s|$)", text)


def test_baseline_training_options_name_the_models_own_defaults():
    """train-baseline's --epochs / --lr default to each baseline's own values (gamenet 40
    epochs at 2e-4, retain 30 at 5e-4): the help must not show the shared loop's."""
    text = help_text("train-baseline")
    assert "(the model's own)" in text and "[default: 50]" not in text
    assert "each bundle's own rule" in help_text("evaluate")


def test_a_config_may_come_from_a_pipe_but_not_a_directory(tmp_path):
    """`--config <(jq ...)` hands over a pipe, which is no regular file but reads as one; a
    directory or a missing path is refused in one line."""
    import os

    from leader.commands.options import read_config_file
    from leader.errors import LeaderError

    read, write = os.pipe()
    os.write(write, b'{"penalty": "l1"}')
    os.close(write)
    try:
        assert read_config_file(Path(f"/dev/fd/{read}")) == {"penalty": "l1"}
    finally:
        os.close(read)
    with pytest.raises(LeaderError, match="a directory, expected a JSON file"):
        read_config_file(tmp_path)
    with pytest.raises(LeaderError, match="file not found"):
        read_config_file(tmp_path / "none.json")
