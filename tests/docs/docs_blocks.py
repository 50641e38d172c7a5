"""The fenced code blocks of README.md and docs/*.md, split into the commands the docs test runs.

A block is marked with an HTML comment on the line before its opening fence:

- ``<!-- docs-test: needs a GPU -->``: it runs only where CUDA is (skipped elsewhere);
- ``<!-- docs-test: needs PATH -->``: it needs a file or package the same page says how to make;
- ``<!-- docs-test: needs a Dask scheduler -->``: it runs against a local cluster the test starts, whose
  address replaces the placeholder ``tcp://SCHEDULER:8786``;
- ``<!-- docs-test: needs the Hugging Face hub -->``: its ``hf download`` commands run as written against
  a stand-in for the hub on 127.0.0.1 (:mod:`tests.docs.local_hub`, through ``HF_ENDPOINT``, with
  ``HF_HOME`` in a scratch folder), which serves each repository the docs test names in
  ``HUB_REPOSITORIES`` from a small local checkpoint of the same format;
- ``<!-- docs-test: needs the package built above, installed -->``: it runs with the package its page
  gives file by file (:func:`package_files`: the blocks whose first line is a ``# path`` comment,
  ``pyproject.toml`` among them) built in a scratch folder named after the project and installed beside
  it, offline and without its dependencies (``pip install --no-deps --no-build-isolation --no-index
  --target``). Its commands run in the folder holding the package's, with the installed copy first on
  ``PYTHONPATH``, so that its entry points are found; its ``pip install`` lines are checked like every
  other, and each ``./FOLDER`` they name must be the package's;
- ``<!-- NAME:start -->``: a README set-up command that ``.ci/run`` runs as written.

Unmarked blocks need nothing the docs test does not have. Every command runs as written; the
environment the docs test adds (the stand-in hub's address, the loopback interface for
``torch.distributed``'s gloo) is listed in ``test_docs.py``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES: tuple[Path, ...] = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
SHELL_LANGUAGES = frozenset({"sh", "bash", "console"})
#: ``text`` marks output and file trees, which are shown, not run.
LANGUAGES = SHELL_LANGUAGES | {"python", "toml", "dockerfile", "text"}
GPU_MARKER = "needs a GPU"
HUB_MARKER = "needs the Hugging Face hub"
PACKAGE_MARKER = "needs the package built above, installed"
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!-- (?:docs-test: (?P<need>.+?)|(?P<ci>[\w-]+):start) -->$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its page, the line of its opening fence, language, text and marker."""

    page: Path
    line: int
    language: str
    code: str
    need: str | None = None  # "needs a GPU", "needs PATH ..." and the like, from a docs-test marker
    ci_name: str | None = None  # the README block name that .ci/run runs

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page.relative_to(REPO)}:{index + 1}: a code block that is never closed")
        marker = _MARKER.match(lines[index - 1]) if index else None
        found.append(
            Block(
                page,
                index + 1,
                fence.group(1),
                "\n".join(lines[index + 1 : end]) + "\n",
                marker.group("need") if marker else None,
                marker.group("ci") if marker else None,
            )
        )
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in page_blocks(page)]


def package_files(page: Path) -> dict[str, str]:
    """The files ``page`` gives as Python and TOML blocks whose first line names them (``# pyproject.toml``,
    ``# fffcore_mybackend/plugin.py``): their paths, relative to the package's folder, and their text."""
    found: dict[str, str] = {}
    for block in page_blocks(page):
        first = block.code.splitlines()[0] if block.code.strip() else ""
        if block.language in ("python", "toml") and first.startswith("# ") and first.endswith((".py", ".toml")):
            found[first.removeprefix("# ").strip()] = block.code
    return found


@dataclass(frozen=True)
class Command:
    """One simple command of a shell block: its environment assignments and its words."""

    env: dict[str, str]
    argv: list[str]
    line: str  # as written, for messages

    @property
    def text(self) -> str:
        """The words alone, joined: what the table of long commands is matched against."""
        return " ".join(self.argv)


def commands(block: Block) -> list[Command]:
    """The commands of a shell or Dockerfile block (a Dockerfile's ``RUN`` lines), one per line and per
    ``&&``; ``$`` prompts and ``#`` comments removed. Pipes, redirections and substitutions are refused,
    so that each command can run without a shell."""
    found: list[Command] = []
    for raw in block.code.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if block.language == "dockerfile":
            if not line.startswith("RUN "):
                continue  # FROM, COPY, ENV: steps of an image build, not commands
            line = line.removeprefix("RUN ")
        line = line.removeprefix("$ ")
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if any(word in ("|", "||", ";", ">", ">>", "<") or "$(" in word or "`" in word for word in words):
            raise ValueError(f"{block.where}: {line!r} needs a shell; keep documented commands simple")
        simple: list[str] = []
        for word in [*words, "&&"]:
            if word != "&&":
                simple.append(word)
                continue
            env = {}
            while simple and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", simple[0]):
                name, _, value = simple.pop(0).partition("=")
                env[name] = value
            found.append(Command(env, simple, line))
            simple = []
    return found
