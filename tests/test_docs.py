"""The README and docs/ say only what is true of the CLI and link only to what exists.

Every `gan-pipeline COMMAND ...` written in README.md or docs/*.md (in a code block, where a
command may go on over `\\`-ended lines and end in a `# comment`, or in inline code) names a
command of the parser `gan-pipeline --help` prints (pipelines.cli.parser.build_parser, nested
commands such as `data prepare` included), and each `--flag` written after it is an option of
that command. Inline code that starts with a command's name (`sweep --resume NAME`) is read
the same way. Flags of other programs (mlflow, ray, pip, pytest) are not checked. Every
relative Markdown link resolves to a file or folder, and a `#anchor` into a .md file names
one of its headings (GitHub's slugs). Fast: no Ray, MLflow or torch is imported."""

from __future__ import annotations

import argparse
import bisect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROGRAM = "gan-pipeline"
SHELL_ENDS = {"&&", "||", "|", ";", "&", ">", ">>", "2>&1", ")", "<"}
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Token:
    line: int
    text: str


@dataclass(frozen=True)
class Markdown:
    code_blocks: list[list[tuple[int, str]]]  # fenced blocks: (line number, line)
    prose: str  # the text with every fenced line blanked, so offsets keep their line numbers


def read_markdown(text: str) -> Markdown:
    blocks: list[list[tuple[int, str]]] = []
    prose: list[str] = []
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
            prose.append("")
        elif block is not None:
            block.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return Markdown(blocks, "\n".join(prose))


def _line_of(starts: list[int], offset: int) -> int:
    return bisect.bisect_right(starts, offset)


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def shell_commands(block: list[tuple[int, str]]) -> list[list[Token]]:
    """A code block's commands as tokens, lines ended by `\\` joined and `# comments` dropped."""
    commands: list[list[Token]] = []
    current: list[Token] = []
    for number, line in block:
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        goes_on = line.endswith("\\")
        current += [Token(number, t) for t in line.rstrip("\\").split()]
        if not goes_on:
            commands.append(current)
            current = []
    if current:
        commands.append(current)
    return commands


def inline_code(prose: str) -> list[list[Token]]:
    """Every inline code span as tokens (a span may go over a line break)."""
    starts = _line_starts(prose)
    spans = []
    for m in INLINE_CODE.finditer(prose):
        spans.append([Token(_line_of(starts, m.start(1) + t.start()), t.group())
                      for t in re.finditer(r"\S+", m.group(1))])
    return spans


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def usages(tokens: list[Token], commands: set[str]) -> list[list[Token]]:
    """The `gan-pipeline ...` invocations in a run of tokens, each from the word after the
    program to the end of its shell command; a span that starts with a command's own name
    (`sweep --resume`) counts as one too."""
    found = []
    starts = [i + 1 for i, t in enumerate(tokens) if t.text == PROGRAM or t.text.endswith("/" + PROGRAM)]
    if tokens and tokens[0].text in commands and any(t.text.startswith("--") for t in tokens[1:]):
        starts.insert(0, 0)
    for start in starts:
        args = []
        for t in tokens[start:]:
            if t.text in SHELL_ENDS or t.text.startswith((">", "2>")):
                break
            args.append(t)
        found.append(args)
    return found


def check_usage(parser: argparse.ArgumentParser, args: list[Token], where: str) -> list[str]:
    """What is wrong with one `gan-pipeline ARGS`: a command that does not exist, a flag its
    parser does not have."""
    problems = []
    path = [PROGRAM]
    rest = list(args)
    while (choices := subparsers_of(parser)) and rest and not rest[0].text.startswith("-"):
        word = rest.pop(0)
        if word.text not in choices:
            problems.append(f"{where}:{word.line}: `{' '.join(path)} {word.text}`: no such command "
                            f"(`{' '.join(path)} --help` has {', '.join(sorted(choices))})")
            return problems
        parser = choices[word.text]
        path.append(word.text)
    for t in rest:
        if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", t.text):
            flag = t.text.split("=", 1)[0]
            if flag not in parser._option_string_actions:
                problems.append(f"{where}:{t.line}: `{' '.join(path)}`: {flag} is not a flag of "
                                f"`{' '.join(path)} --help`")
    return problems


def cli_problems(path: Path, text: str, parser: argparse.ArgumentParser) -> tuple[list[str], int]:
    """(problems, how many usages were checked) for one Markdown file."""
    md = read_markdown(text)
    commands = set(subparsers_of(parser))
    runs = [c for block in md.code_blocks for c in shell_commands(block)] + inline_code(md.prose)
    problems, checked = [], 0
    where = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    for tokens in runs:
        for args in usages(tokens, commands):
            checked += 1
            problems += check_usage(parser, args, where)
    return problems, checked


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: links reduced to their text, lowercase, punctuation
    (but - and _) removed, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in read_markdown(text).prose.split("\n"):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def link_problems(path: Path, text: str) -> tuple[list[str], int]:
    """(problems, how many relative links were checked) for one Markdown file."""
    prose = INLINE_CODE.sub(lambda m: " " * len(m.group()), read_markdown(text).prose)
    starts = _line_starts(prose)
    where = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    problems, checked = [], 0
    for m in LINK.finditer(prose):
        target = m.group(1)
        if SCHEME.match(target):
            continue  # http:, https:, mailto: ...
        checked += 1
        line = _line_of(starts, m.start())
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}:{line}: link ({target}): {file_part} does not exist "
                            f"(relative to {path.parent.name or '.'}/)")
            continue
        if (anchor and dest.suffix == ".md" and dest.is_file()
                and anchor not in anchors(dest.read_text(encoding="utf-8"))):
            problems.append(f"{where}:{line}: link ({target}): no heading in {dest.name} "
                            f"has the anchor #{anchor}")
    return problems, checked


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from pipelines.cli.parser import build_parser  # the parser `gan-pipeline --help` prints

    return build_parser()


def test_every_gan_pipeline_flag_in_the_docs_is_one_its_command_has(parser):
    problems, checked = [], 0
    for path in doc_files():
        found, n = cli_problems(path, path.read_text(encoding="utf-8"), parser)
        problems += found
        checked += n
    assert checked >= 60, f"only {checked} `gan-pipeline` usages found: the reader is broken"
    assert not problems, "flags or commands the CLI does not have:\n" + "\n".join(problems)


def test_every_relative_link_in_the_docs_resolves():
    problems, checked = [], 0
    for path in doc_files():
        found, n = link_problems(path, path.read_text(encoding="utf-8"))
        problems += found
        checked += n
    assert checked >= 20, f"only {checked} relative links found: the reader is broken"
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_a_front_door_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_the_reader_finds_multiline_commented_and_nested_usages(parser, tmp_path):
    text = "\n".join([
        "```bash",
        "ray job submit --address http://127.0.0.1:8265 -- \\",
        "    gan-pipeline sweep --space quick \\",
        "    --trials 2 --no-such-sweep-flag   # a comment: --not-checked",
        "gan-pipeline data prepare folder:x --image-size 64 --parallel --made-up",
        "gan-pipeline trian --epochs 1 && pip install --upgrade pip",
        "mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000",
        "```",
        "Prose with `gan-pipeline promote",
        "--sweep NAME --bogus` over two lines, and `confirm --top 3 --seedz 2`.",
    ])
    problems, checked = cli_problems(tmp_path / "x.md", text, parser)
    assert checked == 5
    assert len(problems) == 5, problems
    assert problems[0].endswith(":4: `gan-pipeline sweep`: --no-such-sweep-flag is not a flag of "
                                "`gan-pipeline sweep --help`")
    assert ":5: `gan-pipeline data prepare`: --made-up" in problems[1]
    assert ":6: `gan-pipeline trian`: no such command" in problems[2]
    assert ":10: `gan-pipeline promote`: --bogus" in problems[3]
    assert ":10: `gan-pipeline confirm`: --seedz" in problems[4]
    assert all("--not-checked" not in p and "--upgrade" not in p and "--port" not in p for p in problems)


def test_the_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Population-based training: `--scheduler pbt|pb2`\n"
                                       "```\n# not a heading\n```\n## Other\n")
    page.write_text("# Page\n\n[ok](../other.md#population-based-training---scheduler-pbtpb2), "
                    "[dup](../other.md#other-1), [self](#page), [web](https://example.com/x)\n"
                    "[gone](../missing.md) and [bad anchor](../other.md#not-a-heading) "
                    "and `[code](not/checked.md)`\n")
    problems, checked = link_problems(page, page.read_text())
    assert checked == 5
    assert [p.split(": ", 1)[0] for p in problems] == [f"{page}:4", f"{page}:4"]
    assert "../missing.md does not exist" in problems[0]
    assert "no heading in other.md has the anchor #not-a-heading" in problems[1]
