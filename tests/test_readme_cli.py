"""Every command and flag of the CLI is in the README (a new user reads it there first), and no
help text shows reStructuredText markup."""

from __future__ import annotations

from pathlib import Path

import click

from driftwarden.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def test_every_command_and_flag_is_in_the_readme():
    missing = []
    for path, cmd in _commands(cli):
        if f"driftwarden {' '.join(path)}" not in README:
            missing.append(" ".join(path))
        for param in cmd.params:
            if isinstance(param, click.Option):
                flags = [o for o in param.opts if o.startswith("--")]
                if flags and not any(f in README for f in flags) and "--help" not in flags:
                    missing.append(f"{' '.join(path)} {flags[0]}")
    assert not missing, missing


def test_help_texts_have_no_markup():
    for path, cmd in _commands(cli):
        texts = [cmd.help or ""] + [getattr(p, "help", "") or "" for p in cmd.params]
        for text in texts:
            assert "``" not in text and ":func:" not in text and ":class:" not in text, path
