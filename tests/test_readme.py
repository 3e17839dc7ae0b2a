"""The README's commands are true as written: every ``alignlab …`` it shows names a command that exists and parses
with the options shown, every file it hands a command exists in the repository, every ``python examples/X.py``
and ``make X`` is there. Fenced blocks (untagged, ``bash``, ``sh``, ``shell``, ``console``) are checked in full;
inline code spans for the command name and the example scripts only (they hold placeholders like ``in.jsonl``)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from alignlab.cli import COMMANDS, GROUPS, build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
"""Fenced blocks of these languages hold commands (``yaml`` and the like hold configs)."""
LAUNCHERS = ("alignlab", "python", "torchrun", "accelerate", "make")
"""A block line is a command when its first word (after VAR=value settings) is one of these."""
PATH_ROOTS = ("examples/", "docs/", "alignlab/", "bench/", "tests/")
PATH_SUFFIXES = (".yaml", ".yml", ".jsonl", ".json", ".py", ".txt", ".csv", ".png", ".md")
OUTPUT_OPTIONS = ("--out",)
"""Options whose value is a folder the command makes."""
WRITTEN = {
    "pairs.jsonl": "the output of `alignlab label … examples/data/review_prompts.jsonl pairs.jsonl`",
}
"""Files a README command writes (not in the repository): each with the command that writes it. Paths under
``runs/`` and values of `OUTPUT_OPTIONS` are outputs too and need no entry."""


def fenced_command_lines(text: str) -> list[tuple[int, str]]:
    """(README line number, text) of every command line in a fenced shell block; ``$ `` prompts dropped."""
    found, language = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language in SHELL_BLOCKS and line.strip():
            command = line.strip().removeprefix("$ ")
            words = [w for w in command.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            if words and words[0] in LAUNCHERS:
                found.append((number, command))
    return found


def inline_spans(text: str) -> list[str]:
    """The inline code spans outside fenced blocks, on one line each."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def words_of(command: str) -> list[str]:
    """The command's words, comments dropped and the README's notation undone: ``[--opt X]`` → ``--opt X``,
    ``(A | B)`` → ``A`` (the first alternative)."""
    command = re.sub(r"\|[^)]*\)", "", command)
    return [w.strip("[]()") for w in shlex.split(command, comments=True) if w.strip("[]()")]


def alignlab_argv(words: list[str]) -> list[str] | None:
    """The arguments `alignlab` gets: after ``alignlab`` or ``-m alignlab`` (``python``/``torchrun``/``accelerate
    launch``); None when the line does not run alignlab."""
    words = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    if words and words[0] == "alignlab":
        return words[1:]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1] in ("alignlab", "alignlab.cli"):
            return words[i + 2:]
    return None


def command_words(argv: list[str]) -> str:
    """The command `argv` names: ``train``, a group and a name (``diagnose ches``), or a group alone (``evaluate …``
    in prose); options before it skipped."""
    words = [w for w in argv if not w.startswith("-") and w not in ("…", "...")]
    return " ".join(words[:2]) if words and words[0] in GROUPS else " ".join(words[:1])


def input_paths(words: list[str]) -> list[str]:
    """The words that name a file of the repository: under `PATH_ROOTS` or with a data/code suffix, not a
    placeholder (``DATA``, ``RUN/final``), not an output (after `OUTPUT_OPTIONS`, under ``runs/``, in `WRITTEN`)."""
    paths = []
    for previous, word in zip(["", *words[:-1]], words, strict=True):
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if previous in OUTPUT_OPTIONS or value.startswith("runs/") or value in WRITTEN or value.startswith("-"):
            continue
        if value.startswith(PATH_ROOTS) or (value.endswith(PATH_SUFFIXES) and not value.isupper()):
            paths.append(value)
    return paths


FENCED = fenced_command_lines(README)
SPANS = inline_spans(README)
KNOWN = {command.words for command in COMMANDS} | set(GROUPS)


def test_the_readme_shows_commands():
    """The extraction finds the README's blocks (a changed fence style would otherwise pass everything)."""
    assert len(FENCED) >= 20 and sum(1 for _, line in FENCED if line.startswith("alignlab ")) >= 15


@pytest.mark.parametrize(("number", "line"), FENCED, ids=[f"line {n}" for n, _ in FENCED])
def test_a_fenced_command_exists_parses_and_names_files_that_exist(number, line):
    words = words_of(line)
    missing = [path for path in input_paths(words) if not (ROOT / path).exists()]
    assert not missing, f"README line {number}: {', '.join(missing)} not in the repository"
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert words[1] in targets, f"README line {number}: no make target {words[1]}"
    argv = alignlab_argv(words)
    if argv is None:
        return
    assert command_words(argv) in KNOWN or argv[0].startswith("--"), f"README line {number}: no command {argv}"
    try:
        build_parser(argv).parse_args(argv)  # parses only: nothing runs
    except SystemExit as stop:
        assert stop.code == 0, f"README line {number}: `alignlab {' '.join(argv)}` does not parse"


def test_inline_commands_name_commands_and_examples_that_exist():
    spans = [span for span in SPANS if span.startswith(("alignlab ", "python examples/", "python -m alignlab "))]
    assert len(spans) >= 30
    for span in spans:
        argv = alignlab_argv(span.split())
        if argv:
            assert command_words([w.strip("[]()") for w in argv]) in KNOWN or argv[0].startswith("--"), span
        for script in re.findall(r"examples/\S+\.py", span):
            assert (ROOT / script).is_file(), span


def test_every_command_has_help():
    """Each command the table lists imports and prints its help (the README's commands are among them)."""
    for command in COMMANDS:
        argv = [*command.words.split(), "--help"]
        with pytest.raises(SystemExit) as stop:
            build_parser(argv).parse_args(argv)
        assert stop.value.code == 0, command.words


def test_the_checks_catch_what_they_are_for():
    """A missing input, an unknown command, and an output are told apart."""
    words = words_of("alignlab label --reward examples/label.yaml examples/data/nope.jsonl pairs.jsonl --out x.json")
    assert input_paths(words) == ["examples/label.yaml", "examples/data/nope.jsonl"]
    assert command_words(alignlab_argv(words_of("alignlab diagnose chez DATA"))) not in KNOWN
    assert alignlab_argv(words_of("torchrun --nproc_per_node=2 -m alignlab train examples/dpo.yaml")) == [
        "train", "examples/dpo.yaml"]
    assert words_of("alignlab evaluate judge PAIRS (--model M | --reward R) [--x 1]  # c") == [
        "alignlab", "evaluate", "judge", "PAIRS", "--model", "M", "--x", "1"]
