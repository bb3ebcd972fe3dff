"""The README and docs/ stay true: every relative link resolves (files and #anchors, by GitHub's anchor rules),
and every `python ...`, `torchrun ... SCRIPT.py` and `make ...` command shown in the README's quick start and
real-dataset section, and in the opening command block of each docs page, names a script whose `--help` succeeds
and flags that its help lists (so a renamed flag cannot leave the docs wrong)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# (page, the "## " section whose bash blocks are checked; None: the page's first bash block, its "what you do").
COMMAND_BLOCKS = [
    ("README.md", "Quick start"),
    ("README.md", "Train on the real dataset"),
    *[(f"docs/{p.name}", None) for p in sorted((REPO / "docs").glob("*.md"))],
]

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `#` line inside one is a shell comment, not a heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text (code spans, emphasis and link markup dropped),
    lower-cased, every character that is not a letter, digit, space, '-' or '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*|(?<!\w)_(?=\w)|(?<=\w)_(?!\w))", "", text)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor of a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(page.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        base = github_anchor(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code (fenced blocks and `code spans`)."""
    out, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for m in LINK.finditer(re.sub(r"`[^`]*`", "``", line)):
            out.append((number, m.group(1)))
    return out


def test_the_anchor_rule_is_githubs():
    assert github_anchor("Stage 2: preprocessing (`--image-size`)") == "stage-2-preprocessing---image-size"
    assert github_anchor("Google's RT-1 network (`--preset rt1`)") == "googles-rt-1-network---preset-rt1"
    assert github_anchor("Two diagnostics: does acting agree with training?") == (
        "two-diagnostics-does-acting-agree-with-training"
    )
    assert github_anchor("**Bold** and [a link](x.md)") == "bold-and-a-link"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
            continue
        if anchor:
            if dest.suffix != ".md":
                broken.append(f"{where} (an anchor into a file that is not markdown)")
            elif anchor not in anchors(dest):
                broken.append(f"{where} (no heading with this anchor in {dest.relative_to(REPO)})")
    assert not broken, "\n".join(broken)


# ---- commands ---------------------------------------------------------------------------------------------


def _section(text: str, title: str | None) -> str:
    if title is None:
        return text
    parts = re.split(r"^## ", text, flags=re.M)
    for part in parts[1:]:
        if part.splitlines()[0].strip() == title:
            return part
    raise AssertionError(f"no '## {title}' section")


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.M | re.S)


def commands(page: str, title: str | None) -> list[str]:
    """The command lines of a section's bash blocks (continuations joined, comments dropped); with title None,
    those of the page's first bash block."""
    blocks = _bash_blocks(_section((REPO / page).read_text(), title))
    if title is None:
        blocks = blocks[:1]
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append(line)
    return out


def parse(command: str) -> tuple[str, str | None, list[str]] | None:
    """('make', target, []) or ('script', path or -m module, flags after it); None for other programs."""
    words = shlex.split(command)
    if not words:
        return None
    if words[0] == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w and w != "["]
        return ("make", targets[0] if targets else None, [])
    program = Path(words[0]).name
    if not (program.startswith("python") or program == "torchrun"):
        return None
    for i, word in enumerate(words[1:], 1):
        if word.endswith(".py"):
            target, rest = word, words[i + 1 :]
            break
        if word == "-m" and program.startswith("python"):
            target, rest = f"-m {words[i + 1]}", words[i + 2 :]
            if not words[i + 1].startswith("rt1"):
                return None  # another program's module (python3 -m venv)
            break
    else:
        return None
    flags = []
    for word in rest:
        for piece in word.split("|"):
            piece = piece.strip("[]")
            if piece.startswith("--"):
                flags.append(piece.split("=")[0])
    return ("script", target, flags)


@cache
def make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, flags=re.M))


def _help(target: str) -> tuple[int, str]:
    argv = [sys.executable, *target.split()] if target.startswith("-m ") else [sys.executable, target]
    proc = subprocess.run(
        [*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    return proc.returncode, proc.stdout + proc.stderr


ALL_COMMANDS = [(page, title, c) for page, title in COMMAND_BLOCKS for c in commands(page, title)]


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[int, str]]:
    """Each script's --help, once per script, all at once (each call is 1-3 s of imports)."""
    scripts = sorted({p[1] for _, _, c in ALL_COMMANDS if (p := parse(c)) and p[0] == "script"})
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(scripts, pool.map(_help, scripts)))


def test_the_readme_sections_show_the_commands_they_should():
    quick = [parse(c) for c in commands("README.md", "Quick start")]
    assert ("make", "demo", []) in quick and ("make", "test", []) in quick, quick
    real = [p[1] for c in commands("README.md", "Train on the real dataset") if (p := parse(c))]
    for script in (
        "data_preprocessing/rt_data_generator_all.py",
        "DataPreprocess_batch_all.py",
        "data_emerge.py",
        "train_ddp.py",
    ):
        assert script in real, real


def test_every_command_shown_parses(helps):
    wrong = []
    for page, title, command in ALL_COMMANDS:
        parsed = parse(command)
        if parsed is None:
            continue
        where = f"{page} ({title or 'first command block'}): {command}"
        kind, target, flags = parsed
        if kind == "make":
            if target not in make_targets():
                wrong.append(f"{where}: no Makefile target {target!r}")
            continue
        if not target.startswith("-m ") and not (REPO / target).is_file():
            wrong.append(f"{where}: no script {target}")
            continue
        rc, text = helps[target]
        if rc != 0:
            wrong.append(f"{where}: {target} --help exited {rc}: {text[-500:]}")
            continue
        for flag in flags:
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                wrong.append(f"{where}: {flag} is not in {target} --help")
    assert not wrong, "\n".join(wrong)
