"""Every fenced block of README.md and docs/*.md runs as written, so the docs cannot drift from the code.

- Python blocks run in order in one namespace per page, as a reader pastes them, in a scratch folder.
  A block starting with a ``# path`` comment is also written to that path first (the package that
  docs/writing-a-backend.md builds), so the blocks that import it run.
- Shell blocks run command by command, without a shell, from a scratch copy of the checkout, each in a
  session of its own with no input, so that a command over its time limit is stopped with every
  process it started. Their environment adds :data:`COMMAND_ENVIRONMENT` (gloo on the loopback
  interface), and for a block that needs the hub the stand-in's address (:func:`hub_environment`).
  A block that needs the package its page builds runs beside it, with it installed (:func:`build_package`).
  ``pip install`` lines are checked, not run (the test environment is already installed; the README's
  two set-up commands are run as written by ``.ci/run``): every extra they name must exist and fffcore
  itself must come from a checkout, since it is not on the package index.
- The few documented commands that take minutes (:data:`LONG_COMMANDS`) are run short of their long
  part: ``fff compare --dry-run``, ``pytest --collect-only``, or only their argument parsing
  (``docs_parse_only.py``). ``pytest tests/docs/test_docs.py --docs-full`` runs them as written.
- TOML blocks parse; ``text`` blocks (output, file trees) are shown, not run.
- Only a GPU or a file the same page says how to make excuses a block (see :mod:`tests.docs.docs_blocks`);
  a package the page gives file by file is built and installed in a scratch folder, without network.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from . import local_hub as local_hub_module
from .docs_blocks import (
    GPU_MARKER,
    HUB_MARKER,
    LANGUAGES,
    PACKAGE_MARKER,
    PAGES,
    REPO,
    SHELL_LANGUAGES,
    Block,
    Command,
    all_blocks,
    commands,
    package_files,
)

BLOCKS = all_blocks()
#: Commands run against a scheduler: the test starts a local cluster and puts its address in place of the placeholder.
SCHEDULER_MARKER = "needs a Dask scheduler"
SCHEDULER_PLACEHOLDER = "tcp://SCHEDULER:8786"
#: How a long documented command is checked by default, by the longest prefix of its words. Durations
#: measured on the 2-core development machine.
LONG_COMMANDS: dict[str, str] = {
    "fff compare": "dry-run",  # 3 minutes by default, up to 10 with every backend and shape family
    "pytest": "collect",  # the benchmark suite at the paper's shapes, or the conformance suite at 200 examples
    "python -m pytest": "collect",  # test files this test run runs anyway
    "fff check numba --thorough": "parse",  # about two minutes
    "python -m benchmarks.studies.soak": "parse",  # 100,000 calls: 90 s
    "python -m benchmarks.studies.model": "parse",  # 12 BERT layers: 70 s
    "python -m benchmarks.studies.model --layers 2": "run",  # the small model: seconds
    "python -m benchmarks.studies.numba_scaling": "parse",  # fresh processes with empty caches: minutes
    "pytest --pyargs fffcore.conformance --fff-backend mybackend": "run",  # the page's NumPy backend: 10 s
}
#: A command outside that table taking longer than this belongs in it.
SHORT_COMMAND_SECONDS = 240
#: How long a command over its limit has, after SIGTERM, to stop the processes it started (torchrun
#: stops its workers) before the rest of its session is killed.
STOP_SECONDS = 30
#: The repositories documented ``hf download`` commands fetch, as the stand-in hub serves them: a small
#: checkpoint of the published format (``config.json`` with its ``arch`` container, the weights under
#: the paper's module names in both formats, a tokenizer), whose weights are random.
HUB_REPOSITORIES: dict[str, tuple[Path, tuple[str, ...]]] = {
    "pbelcak/UltraFastBERT-1x11-long": (
        REPO / "tests" / "data" / "ultrafastbert" / "mlm-1tree",
        ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json"),
    ),
}


def loopback_interface() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS), where there is one."""
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((name for name in names if name in ("lo", "lo0")), None)


_LOOPBACK = loopback_interface()
#: Added to every documented command's environment. ``torch.distributed``'s gloo listens on the address
#: of the machine's host name unless told an interface; on the loopback one it listens on 127.0.0.1.
COMMAND_ENVIRONMENT: dict[str, str] = {"GLOO_SOCKET_IFNAME": _LOOPBACK} if _LOOPBACK else {}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])


def gpu_here() -> bool:
    if importlib.util.find_spec("torch") is not None:
        import torch

        return bool(torch.cuda.is_available())
    return False


def long_mode(command: Command) -> str:
    """``run``, or how :data:`LONG_COMMANDS` says to check ``command`` short of running it."""
    text = command.text
    matches = [prefix for prefix in LONG_COMMANDS if text == prefix or text.startswith(prefix + " ")]
    return LONG_COMMANDS[max(matches, key=len)] if matches else "run"


def hub_environment(environment: dict[str, str], endpoint: str, home: Path) -> dict[str, str]:
    """``environment`` pointed at the stand-in hub at ``endpoint``: the reader's Hugging Face settings
    (a token, a cache, offline mode) left out, and the cache and settings in the scratch folder ``home``."""
    kept = {name: value for name, value in environment.items() if not name.startswith(("HF_", "HUGGING"))}
    return {**kept, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}


def check_download(command: Command, checkout: Path, where: str) -> None:
    """An ``hf download REPO --local-dir FOLDER`` command left every file of ``REPO`` in ``FOLDER``."""
    if "--local-dir" not in command.argv:
        return
    folder = checkout / command.argv[command.argv.index("--local-dir") + 1]
    source, files = HUB_REPOSITORIES[command.argv[2]]
    for name in files:
        fetched = folder / name
        assert fetched.is_file(), f"{where}: {command.line!r} left no {name} in {folder.name}"
        assert fetched.read_bytes() == (source / name).read_bytes(), f"{where}: {name} differs from the one served"


def run_command(argv: list[str], cwd: Path, environment: dict[str, str], limit: float | None) -> tuple[int, str] | None:
    """Run ``argv`` in a session of its own, without input: (exit status, output), or None when it ran
    over ``limit`` seconds and was stopped, with every process of its session."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            stop_session(process)
            return None
    return process.returncode, stdout + stderr


def stop_session(process: subprocess.Popen[str]) -> None:
    """SIGTERM to ``process``'s session, so that it can stop what it started (torchrun stops its workers,
    which run in sessions of their own); SIGKILL after :data:`STOP_SECONDS`. The leader is waited for,
    not its output, which a process it started may hold open."""
    if not hasattr(os, "killpg"):
        process.kill()
        process.wait()
        return
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return  # every process of the session has ended
        try:
            process.wait(timeout=STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def check_pip_install(command: Command, where: str) -> None:
    """Each requirement parses; fffcore comes from a checkout with extras it has."""
    from packaging.requirements import Requirement

    for word in command.argv[2:]:
        if word.startswith("-"):
            continue  # -e, --upgrade: options of pip
        if word.startswith((".", "/")):
            extras = word.partition("[")[2]
            named = {extra.strip() for extra in extras.rstrip("]").split(",") if extra.strip()}
            unknown = sorted(named - EXTRAS)
            assert not unknown, f"{where}: {word}: fffcore has no extra {unknown}; it has {sorted(EXTRAS)}"
            continue
        requirement = Requirement(word)
        assert requirement.name != "fffcore", (
            f"{where}: {word!r}: fffcore is not on the package index; install it from a checkout "
            "(pip install -e '.[...]')"
        )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of the checkout, so that documented commands writing files leave the repository alone."""
    target = tmp_path_factory.mktemp("docs") / "fffcore"
    ignored = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", ".benchmarks")
    shutil.copytree(REPO, target, ignore=ignored)
    return target


@pytest.fixture
def local_hub() -> Iterator[str]:
    """The address of a stand-in for the Hugging Face hub on 127.0.0.1, serving :data:`HUB_REPOSITORIES`."""
    with local_hub_module.serve(HUB_REPOSITORIES) as endpoint:
        yield endpoint


@pytest.fixture
def fresh_modules() -> Iterator[None]:
    """Modules a page's blocks import (the package it builds) are forgotten afterwards."""
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("fffcore_mybackend"):
            del sys.modules[name]
    sys.path[:] = path


@dataclass(frozen=True)
class BuiltPackage:
    """A package a page gives file by file, built and installed in a scratch folder."""

    folder: Path  # its files, as the page lays them out; commands run in the folder holding it
    site: Path  # where it is installed, first on the commands' PYTHONPATH


#: Packages built so far, by page: the package, or why it could not be built.
_PACKAGES: dict[Path, BuiltPackage | str] = {}


def build_package(page: Path, scratches: pytest.TempPathFactory) -> BuiltPackage:
    """Write the files ``page`` gives (:func:`package_files`) into ``SCRATCH/PROJECT-NAME`` of a new scratch
    folder and install it in ``SCRATCH/site``: offline, without its dependencies (the test environment has
    them) and with the test environment's setuptools, so that the build fails where the page's
    ``pyproject.toml`` does. Built once per page."""
    if page in _PACKAGES:
        built = _PACKAGES[page]
        if isinstance(built, str):
            pytest.fail(built)
        return built
    scratch = scratches.mktemp("package")
    files = package_files(page)
    project = tomllib.loads(files["pyproject.toml"])["project"]
    folder = scratch / project["name"]
    for name, code in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")
        if "/" in name:
            (target.parent / "__init__.py").touch()  # in the page's file tree, empty
    site = scratch / "site"
    argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    argv += ["--disable-pip-version-check", "--target", str(site), str(folder)]
    finished = run_command(argv, scratch, dict(os.environ), SHORT_COMMAND_SECONDS)
    if finished is None or finished[0] != 0:
        output = "ran over its limit" if finished is None else finished[1][-4000:]
        _PACKAGES[page] = f"{page.name}: the package it gives does not build: {' '.join(argv)}\n{output}"
        pytest.fail(_PACKAGES[page])
    _PACKAGES[page] = BuiltPackage(folder, site)
    return _PACKAGES[page]


def check_local_folders(command: Command, package: BuiltPackage, where: str) -> None:
    """The ``./FOLDER`` a documented ``pip install`` names is the package the page builds."""
    for word in command.argv[2:]:
        if word.startswith("./"):
            assert (package.folder.parent / word).resolve() == package.folder.resolve(), (
                f"{where}: {word} is not the package the page builds, ./{package.folder.name}"
            )


#: What a documented ``fff backends`` line says it prints: ``fff backends    # mybackend  available``.
_LISTED = re.compile(r"#\s*([\w-]+)\s+available\b")


def check_listed_as_available(command: Command, output: str, where: str) -> None:
    """``fff backends`` lists the backend its documented line's comment names as available."""
    for name in _LISTED.findall(command.line):
        assert re.search(rf"^{re.escape(name)}\s+available$", output, re.M), (
            f"{where}: `fff backends` does not list {name} as available:\n{output[-4000:]}"
        )


def test_every_block_has_a_language_the_test_knows() -> None:
    unknown = [f"{block.where}: ```{block.language}" for block in BLOCKS if block.language not in LANGUAGES]
    assert not unknown, f"give these blocks one of {sorted(LANGUAGES)} (text for output): {unknown}"


def test_blocks_are_excused_only_for_a_gpu_or_a_file_the_page_makes() -> None:
    """A scheduler and the hub are not excuses: those commands run against a local one."""
    for block in (b for b in BLOCKS if b.need is not None):
        if block.need == GPU_MARKER:
            continue
        if block.need == HUB_MARKER:
            served = sorted(HUB_REPOSITORIES)
            for command in commands(block):
                assert command.argv[:2] == ["hf", "download"] and command.argv[2] in served, (
                    f"{block.where}: {command.line!r}: the stand-in hub serves `hf download` of {served}"
                )
            continue
        if block.need == SCHEDULER_MARKER:
            assert SCHEDULER_PLACEHOLDER in block.code, f"{block.where}: name the scheduler {SCHEDULER_PLACEHOLDER}"
            continue
        if block.need == PACKAGE_MARKER:
            files = package_files(block.page)
            assert "pyproject.toml" in files and any(name.endswith(".py") for name in files), (
                f"{block.where}: {block.page.name} gives no package to build: blocks whose first line is "
                f"`# pyproject.toml` and `# package/module.py`; it gives {sorted(files)}"
            )
            continue
        assert block.need.startswith("needs "), f"{block.where}: unknown marker {block.need!r}"
        made = block.need.removeprefix("needs ").split()[0]
        text = block.page.read_text(encoding="utf-8")
        elsewhere = text.replace(block.code, "", 1)
        assert made in elsewhere, f"{block.where}: needs {made}, which {block.page.name} does not say how to make"


def test_the_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    named = {block.ci_name: block for block in BLOCKS if block.ci_name in ("main-command", "test-command")}
    assert set(named) == {"main-command", "test-command"}, "README.md needs its main-command and test-command blocks"
    assert "for name in main-command test-command" in ci
    for block in named.values():
        steps = commands(block)
        assert steps[0].argv[:3] == ["python3", "-m", "venv"] and steps[1].argv[0] == "."
        for step in steps:
            if step.argv[:2] == ["pip", "install"]:
                check_pip_install(step, block.where)
    assert commands(named["main-command"])[-1].text == "fff compare"
    assert commands(named["test-command"])[-1].text == "python -m pytest"


PYTHON_PAGES = sorted({block.page for block in BLOCKS if block.language == "python"})


#: Pages whose Python blocks have run in the scratch checkout: the number that ran, or the failure.
_PAGE_RUNS: dict[Path, tuple[int, str | None]] = {}


def run_python_blocks(page: Path, checkout: Path) -> tuple[int, str | None]:
    """Run ``page``'s Python blocks once, in order, in one namespace, from the scratch checkout (where the
    page's shell commands run too, so files a block makes are there for them): (blocks run, failure)."""
    if page in _PAGE_RUNS:
        return _PAGE_RUNS[page]
    blocks = [b for b in BLOCKS if b.page == page and b.language == "python"]
    for name, code in package_files(page).items():
        if "/" in name:  # a module of the package; its pyproject.toml would replace the checkout's
            target = checkout / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code, encoding="utf-8")
            (target.parent / "__init__.py").touch()
    namespace: dict[str, object] = {"__name__": "docs_example"}
    ran, failure = 0, None
    here, path = os.getcwd(), list(sys.path)
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    try:
        for block in blocks:
            if block.need == GPU_MARKER and not gpu_here():
                continue
            try:
                exec(compile(block.code, block.where, "exec"), namespace)
            except Exception as error:
                failure = f"{block.where}: the block raised {type(error).__name__}: {error}"
                break
            ran += 1
    finally:
        os.chdir(here)
        sys.path[:] = path
    _PAGE_RUNS[page] = (ran, failure)
    return ran, failure


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(p.relative_to(REPO)) for p in PYTHON_PAGES])
def test_python_blocks_run_in_order(page: Path, checkout: Path, fresh_modules: None) -> None:
    blocks = [b for b in BLOCKS if b.page == page and b.language == "python"]
    if any("torch" in b.code for b in blocks):
        pytest.importorskip("torch", reason="these blocks need PyTorch: pip install -e '.[torch]'")
    if any("dask" in b.code for b in blocks):
        pytest.importorskip("dask.array", reason="these blocks need Dask: pip install -e '.[dask]'")
    ran, failure = run_python_blocks(page, checkout)
    if failure is not None:
        pytest.fail(failure)
    if ran == 0:
        pytest.skip(f"every Python block of {page.name} needs a GPU")


def test_toml_blocks_parse_and_name_the_plugin_group() -> None:
    import fffcore

    for block in (b for b in BLOCKS if b.language == "toml"):
        document = tomllib.loads(block.code)
        groups = document.get("project", {}).get("entry-points", {})
        assert not groups or fffcore.ENTRY_POINT_GROUP in groups, f"{block.where}: entry points {list(groups)}"


SHELL_COMMANDS = [
    (block, command)
    for block in BLOCKS
    if (block.language in SHELL_LANGUAGES or block.language == "dockerfile") and block.ci_name is None
    for command in commands(block)
]


@pytest.mark.parametrize(
    ("block", "command"), SHELL_COMMANDS, ids=[f"{b.where}:{c.line[:70]}" for b, c in SHELL_COMMANDS]
)
def test_shell_commands_run(block: Block, command: Command, checkout: Path, request: pytest.FixtureRequest) -> None:
    if block.need == GPU_MARKER and not gpu_here():
        pytest.skip(f"{block.where} needs a GPU")
    if block.need is not None and block.need not in (GPU_MARKER, SCHEDULER_MARKER, HUB_MARKER, PACKAGE_MARKER):
        pytest.skip(f"{block.where} {block.need}")
    if any(b.page == block.page and b.language == "python" for b in BLOCKS):
        _, failure = run_python_blocks(block.page, checkout)  # files the page's code made, for its commands
        assert failure is None, failure
    package = None
    if block.need == PACKAGE_MARKER:
        package = build_package(block.page, request.getfixturevalue("tmp_path_factory"))
    if command.argv[:2] == ["pip", "install"]:
        check_pip_install(command, block.where)
        if package is not None:
            check_local_folders(command, package, block.where)
        return
    full = request.config.getoption("--docs-full")
    mode = "run" if full else long_mode(command)
    argv = list(command.argv)
    if block.need == SCHEDULER_MARKER:  # the documented placeholder address, pointed at a real local scheduler
        address = request.getfixturevalue("dask_client").scheduler.address
        argv = [word.replace(SCHEDULER_PLACEHOLDER, address) for word in argv]
    if mode == "dry-run":
        argv.append("--dry-run")
    elif mode == "collect":
        argv += ["--collect-only", "-q"]
    elif mode == "parse":
        argv = [sys.executable, str(Path(__file__).with_name("docs_parse_only.py")), *argv]
    environment = {**os.environ, **COMMAND_ENVIRONMENT, **command.env}
    # The documented words run with this interpreter's fff, python and pytest.
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    if block.need == HUB_MARKER:
        endpoint = request.getfixturevalue("local_hub")
        environment = hub_environment(environment, endpoint, request.getfixturevalue("tmp_path") / "hf-home")
    cwd = checkout
    if package is not None:  # beside the package's folder, with the package installed
        cwd = package.folder.parent
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package.site), environment.get("PYTHONPATH")]))
    limit = None if full else SHORT_COMMAND_SECONDS
    finished = run_command(argv, cwd, environment, limit)
    if finished is None:
        pytest.fail(f"{block.where}: {command.line!r} ran over {limit} s; add it to LONG_COMMANDS with how to check it")
    returncode, output = finished
    assert returncode == 0, f"{block.where}: {command.line!r} ({mode}) exited {returncode}:\n{output[-4000:]}"
    if block.need == HUB_MARKER:
        check_download(command, checkout, block.where)
    if package is not None and command.argv[:2] == ["fff", "backends"]:
        check_listed_as_available(command, output, block.where)


TEXT_PAGES = (*PAGES, REPO / "benchmarks" / "NOTES.md")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
#: A file named in backticks: a path with a folder and a file extension (`backends/numba/kernels.py`).
_NAMED_FILE = re.compile(r"`([\w.-]+(?:/[\w.-]+)+\.(?:py|md|sh|json|png|cu|toml))`")


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page``: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", TEXT_PAGES, ids=[str(p.relative_to(REPO)) for p in TEXT_PAGES])
def test_links_and_named_files_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"link {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"link {target}: {linked.name} has no heading #{anchor}")
    for named in _NAMED_FILE.findall(text):
        if not (REPO / named).exists():
            broken.append(f"`{named}`: no such file in the checkout")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


#: Words about how the project was made rather than what it does; readers cannot act on them.
_MAKING_OF = re.compile(r"\bthe issue'?s?\b|\bissue #?\d+|\bthis session\b|\bwas lent\b|\bnot drawn\b", re.I)


@pytest.mark.parametrize("page", TEXT_PAGES, ids=[str(p.relative_to(REPO)) for p in TEXT_PAGES])
def test_pages_speak_of_what_is_measured_not_how_it_was_made(page: Path) -> None:
    found = [line for line in page.read_text(encoding="utf-8").splitlines() if _MAKING_OF.search(line)]
    assert not found, f"{page.relative_to(REPO)}: {found}"


def test_the_readme_says_how_to_get_the_cpu_build_of_torch_elsewhere() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
