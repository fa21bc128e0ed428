"""The docs cannot rot: every relative link in README.md and docs/ resolves (file and heading anchor), and every
`modgap ...` command line they show names a command and options that exist, checked against the CLI itself
(the typer app as click sees it). The checks are shown to catch a broken link and a wrong flag on fixtures."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`(modgap [^`]+)`")
SHELL = {"", "bash", "sh", "shell", "console"}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    out, fenced = set(), False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6} (.*)", line)):
            out.add(slug(m.group(1)))
    return out


def link_errors(page: Path) -> list[str]:
    errors = []
    for n, line in enumerate(page.read_text().splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not ours to check offline
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                errors.append(f"{page.name}:{n}: link {target!r}: {dest} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                errors.append(f"{page.name}:{n}: link {target!r}: no heading #{anchor} in {dest.name}")
    return errors


def command_lines(page: Path) -> list[tuple[int, str, bool]]:
    """(line number, command, from a code block?) for every `modgap ...` shown on the page."""
    out, fence, held = [], None, ""
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if m := FENCE.match(line):
            fence = m.group(1) if fence is None else None
            continue
        if fence is None:
            out += [(n, cmd, False) for cmd in INLINE.findall(line)]
        elif fence in SHELL:
            held += line
            if held.endswith("\\"):
                held = held[:-1] + " "
                continue
            words = shlex.split(held, comments=True, posix=True) if held.strip() else []
            held = ""
            segment: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", "||", "|", ";"):
                    if segment and segment[0] == "modgap":
                        out.append((n, shlex.join(segment), True))
                    segment = []
                else:
                    segment.append(word)
    return out


def _app():
    import typer

    from modgap.cli.main import app

    return typer.main.get_command(app)


def command_errors(command: str, strict: bool = True, root=None) -> list[str]:
    """What is wrong with one command line: a subcommand that does not exist, a group named without a command,
    an option its command lacks. ``strict=False`` (prose): ``a|b`` alternatives, ``[...]``, ``...`` and a
    command family (``modgap train``) allowed."""
    root = root or _app()  # typer's own click: a group is what has subcommands
    words = shlex.split(command) if strict else command.replace("[", " ").replace("]", " ").replace("...", " ").split()
    paths: list[tuple[list[str], Any]] = [([], root)]
    rest = words[1:]
    while rest and hasattr(paths[0][1], "commands") and not rest[0].startswith("-"):
        names = rest[0].split("|") if not strict else [rest[0]]
        grown = []
        for path, group in paths:
            for name in names:
                sub = group.commands.get(name)
                if sub is None:
                    return [f"{command!r}: {' '.join(['modgap', *path])} has no command {name!r}"]
                grown.append(([*path, name], sub))
        paths, rest = grown, rest[1:]
    errors = []
    for path, cmd in paths:
        if hasattr(cmd, "commands") and strict and "--help" not in rest:  # prose may name a command family
            errors.append(f"{command!r}: {' '.join(['modgap', *path])} needs a command ({', '.join(cmd.commands)})")
            continue
        flags = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
        for word in rest:
            if not word.startswith("--"):
                continue
            names = word.split("=")[0].split("|") if not strict else [word.split("=")[0]]
            errors += [f"{command!r}: {' '.join(['modgap', *path])} has no option {name}"
                       for name in names if name.rstrip(".,") not in flags]  # fmt: skip
    return errors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert link_errors(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_names_a_command_and_options_that_exist(page):
    root = _app()
    errors = [f"{page.name}:{n}: {e}" for n, cmd, block in command_lines(page)
              for e in command_errors(cmd, strict=block, root=root)]  # fmt: skip
    assert errors == []


def test_the_docs_pages_are_linked_from_the_readme_and_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in PAGES[1:]:
        assert f"](docs/{page.name}" in readme, f"docs/{page.name} is not linked from the README"


def test_the_checks_catch_a_broken_link_and_a_wrong_flag(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "README.md"
    page.write_text(
        "See [the other page](docs/other.md#a-section), [gone](docs/missing.md) and [nowhere](docs/other.md#nope).\n"
        "\n```bash\nmodgap align fit --method realign --source s \\\n    --target t --out a\n"
        "modgap align fit --src s   # renamed flag\nmodgap store inf x && modgap align\n```\n"
        "Inline: `modgap train pretrain|sft --data F`, `modgap embed --encoderr x`.\n"
    )
    assert link_errors(page) == [
        f"README.md:1: link 'docs/missing.md': {tmp_path / 'docs' / 'missing.md'} does not exist",
        "README.md:1: link 'docs/other.md#nope': no heading #nope in other.md",
    ]
    found = command_lines(page)
    assert [(n, block) for n, _, block in found] == [(5, True), (6, True), (7, True), (7, True), (9, False),
                                                     (9, False)]  # fmt: skip
    errors = [e for _, cmd, block in found for e in command_errors(cmd, strict=block)]
    assert errors == [
        "'modgap align fit --src s': modgap align fit has no option --src",
        "'modgap store inf x': modgap store has no command 'inf'",
        "'modgap align': modgap align needs a command (" + errors[2].split("(", 1)[1],
        "'modgap embed --encoderr x': modgap embed has no option --encoderr",
    ]
