"""The command line builds only the named library command's parser (issue 17 start-up).

`fedsynth.cli.LIBRARY_COMMANDS` is a static table of the library's own command words and
the modules that declare them, so that `fedsynth meta ...` neither imports every command
module of every part nor scans the entry points. These tests fail when the table and the
commands that discovery finds drift apart, and when the subset parser reads a line
differently from the whole tree.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import pkgutil
from collections import defaultdict

import pytest

from fedsynth import cli
from fedsynth.cli import commands as library_package


def _library_modules() -> dict[str, set[tuple[str, ...]]]:
    """Module name (within fedsynth.cli.commands) -> the paths its COMMANDS declare."""
    found: dict[str, set[tuple[str, ...]]] = {}
    for info in pkgutil.iter_modules(library_package.__path__):
        module = importlib.import_module(f"{library_package.__name__}.{info.name}")
        found[info.name] = {command.path for command in getattr(module, "COMMANDS", [])}
    return found


def test_table_lists_every_word_only_the_library_declares() -> None:
    by_word: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for command in cli.discover_commands():
        by_word[command.path[0]].add(command.path)
    library = _library_modules()
    library_paths = set().union(*library.values())
    owned = {word for word, paths in by_word.items() if paths <= library_paths}
    assert set(cli.LIBRARY_COMMANDS) == owned
    for word, modules in cli.LIBRARY_COMMANDS.items():
        # exactly the modules that declare the word's commands, and all its commands
        declaring = {name for name, paths in library.items()
                     if any(path[0] == word for path in paths)}
        assert set(modules) == declaring, word
        subset = cli.library_commands_for([word])
        assert subset is not None
        assert {command.path for command in subset} == by_word[word], word


def test_role_words_and_options_take_the_whole_tree() -> None:
    assert cli.library_commands_for([]) is None
    assert cli.library_commands_for(["--version"]) is None
    assert cli.library_commands_for(["--log-format", "json", "meta"]) is None
    assert cli.library_commands_for(["model", "fit"]) is None  # shared with a role
    assert cli.library_commands_for(["round", "start"]) is None


LINES = [
    ["meta", "--example"],
    ["meta", "--example", "--format", "json", "--method", "DL", "--level", "90"],
    ["meta", "data.csv", "--by", "analysis", "--test", "knha"],
    ["valmeta", "x.csv", "--measure", "cstat", "--method", "ML"],
    ["version"],
    ["ca", "init", "--dir", "pki"],
]


def _namespace(parser, line: list[str]) -> dict:
    return vars(parser.parse_args(line))


@pytest.mark.parametrize("line", LINES)
def test_subset_parser_reads_a_line_as_the_whole_tree(line: list[str]) -> None:
    expected = _namespace(cli.build_parser(), line)
    subset = cli.build_parser(cli.library_commands_for(line))
    assert _namespace(subset, line) == expected


def _help(parser, line: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser.parse_args(line)
        except SystemExit as exc:
            return int(exc.code or 0), out.getvalue(), err.getvalue()
    raise AssertionError(f"{line} did not exit")


@pytest.mark.parametrize("line", [["meta", "--help"], ["meta", "--no-such-option"],
                                  ["meta", "--method", "NOPE"], ["ca", "--help"],
                                  ["valmeta", "--level"]])
def test_help_and_errors_are_the_same(line: list[str]) -> None:
    whole = _help(cli.build_parser(), line)
    subset = _help(cli.build_parser(cli.library_commands_for(line)), line)
    assert subset == whole
    assert whole[1] or whole[2]


def test_main_takes_the_subset_for_a_library_word(monkeypatch) -> None:
    def refuse() -> list:
        raise AssertionError("discover_commands called for a library command")

    monkeypatch.setattr(cli, "discover_commands", refuse)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["version"]) == 0
    assert "fedsynth" in out.getvalue()


def _outcome(parser, line: list[str]) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return ("ok", vars(parser.parse_args(line)))
        except SystemExit as exc:
            return ("exit", exc.code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("word", sorted(cli.LIBRARY_COMMANDS))
def test_every_option_of_every_library_command_reads_the_same(word: str) -> None:
    """Each option of each subset command, with a plausible and a bad value, both ways."""
    whole = cli.build_parser()
    subset = cli.build_parser(cli.library_commands_for([word]))
    lines: list[list[str]] = []
    for command in cli.library_commands_for([word]) or []:
        leaf = argparse.ArgumentParser()
        command.add_arguments(leaf)
        for action in leaf._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                values = [[]] if action.nargs == 0 else [
                    [str(next(iter(action.choices)))] if action.choices else ["1"],
                    ["no-such-value"]]
                lines.extend([*command.path, flag, *value] for value in values)
    assert lines
    for line in lines:
        assert _outcome(subset, line) == _outcome(whole, line), line
