"""The container image's install, without Docker: the Dockerfile's own ``pip install`` in a clean virtualenv.

The image itself is built and run by tests/deploy/test_image.py (podman; opt-in: GATEWAY_TEST_IMAGE=1). Here the
Dockerfile is parsed, its build context is assembled the way ``docker build`` would (the files its COPY lines
name, less what .dockerignore excludes), and its install command -- which must be exactly the README's production
install, ``pip install --no-cache-dir '.[speed]'`` -- runs in a new virtualenv. The installed ``gateway``
must then report its version, pass ``check-config`` and apply every packaged migration to a fresh database.

A second install is ``make run`` on a fresh copy of the sources: it must serve with only the package and
its ``speed`` extra installed (no pytest, mypy, ruff or playwright), in a venv under a size limit, which
``make test`` then extends in place.

The installs download the dependencies from PyPI (a few minutes at most). Deselect them with
``-k 'not test_install and not make_run'`` or ``GATEWAY_TEST_SKIP_INSTALL=1``; under GATEWAY_TEST_STRICT=1 (CI)
they always run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import free_port

# Test dependencies (the `test` extra); without them the module is skipped, and under GATEWAY_TEST_STRICT=1
# the import error fails the run.
try:
    import yaml
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        raise
    pytest.skip(f"{exc.name} is not installed (pip install pyyaml)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MIGRATIONS = REPO / "gateway" / "store" / "migrations"

# The README's production install; the Dockerfile must run exactly this (with its venv's pip on PATH).
INSTALL_COMMAND = ["pip", "install", "--no-cache-dir", ".[speed]"]
INSTALL_TIMEOUT = 480


# --- reading the Dockerfile --------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_stages(text: str = "") -> list[Stage]:
    """The Dockerfile's build stages with their instructions (continuations joined, comments dropped)."""
    text = text or DOCKERFILE.read_text()
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"

    stages: list[Stage] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM, which FROM lines may use (${NAME})
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            args = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], args)
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            stages.append(Stage(base=words[0], name=words[2] if len(words) == 3 and words[1].lower() == "as" else ""))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def pip_installs(stage: Stage) -> list[list[str]]:
    """Every ``pip install`` command a stage's RUN lines execute, as argument lists."""
    commands = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|;|\|\|", run):
            words = shlex.split(part)
            if len(words) >= 2 and Path(words[0]).name in {"pip", "pip3"} and words[1] == "install":
                commands.append(words)
            elif words[:4] in (["python", "-m", "pip", "install"], ["python3", "-m", "pip", "install"]):
                commands.append(["pip", *words[3:]])
    return commands


# --- the build context: .dockerignore --------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression (Go filepath.Match plus ``**``, as Docker uses)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


@functools.cache
def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) for every .dockerignore line, in order; the last rule matching a path wins."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not negated, _pattern_regex(pattern)))
    return rules


def in_context(relative: str) -> bool:
    """Whether ``docker build`` sends the file ``relative`` (a path in the repo) in its build context."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the path and its parent folders
    included = True
    for excludes, regex in dockerignore_rules():
        if any(regex.fullmatch(c) for c in candidates):
            included = not excludes
    return included


def assemble_build_dir(stage: Stage, destination: Path) -> Path:
    """Replay the stage's COPY lines from the repo (filtered by .dockerignore) into ``destination``.

    Returns the folder standing in for the stage's WORKDIR at its install command.
    """
    workdir = destination
    for keyword, args in stage.instructions:
        if keyword == "WORKDIR":
            workdir = destination / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in shlex.split(args))
            *sources, target = words
            target_path = workdir / target if not target.startswith("/") else destination / target.lstrip("/")
            into_folder = target.endswith("/") or len(sources) > 1
            for source in sources:
                src = REPO / source
                assert src.exists(), f"COPY {source}: not in the repository"
                assert src.is_dir() or in_context(source), f"COPY {source}: excluded by .dockerignore"
                files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
                for file in files:
                    relative = file.relative_to(REPO).as_posix()
                    if not in_context(relative):
                        continue
                    if src.is_file():
                        out = target_path / src.name if into_folder else target_path
                    else:  # a folder's contents go into the target folder
                        out = target_path / file.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, out)
        elif keyword == "RUN" and INSTALL_COMMAND in pip_installs(Stage(base="", instructions=[(keyword, args)])):
            return workdir
    pytest.fail("the build stage never runs the install command", pytrace=False)


def build_stage() -> Stage:
    stages = dockerfile_stages()
    installing = [s for s in stages if INSTALL_COMMAND in pip_installs(s)]
    assert len(installing) == 1, f"exactly one stage must run {shlex.join(INSTALL_COMMAND)}"
    return installing[0]


# --- the Dockerfile, statically ----------------------------------------------------------------------------


def test_dockerfile_installs_with_the_readme_command() -> None:
    stages = dockerfile_stages()
    installs = [cmd for stage in stages for cmd in pip_installs(stage)]
    assert installs == [INSTALL_COMMAND], f"the image's only pip install must be {shlex.join(INSTALL_COMMAND)}"
    # pip is the virtualenv's: its bin folder is first on PATH when the install runs.
    stage = build_stage()
    env = " ".join(stage.all("ENV"))
    venvs = re.findall(r"python3? -m venv (\S+)", " ".join(stage.all("RUN")))
    assert venvs and f"PATH={venvs[0]}/bin:" in env


def test_dockerfile_runtime_contract() -> None:
    stages = dockerfile_stages()
    final = stages[-1]
    assert all(stage.base == "python:3.11-slim-bookworm" for stage in stages)
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["gateway"]
    assert exec_form(final.all("CMD")[-1]) == ["serve", "--listen", "0.0.0.0:4180"]
    assert final.all("EXPOSE") == ["4180"]
    (user,) = final.all("USER")
    uid = user.split(":")[0]
    assert uid == "10001", "a numeric non-root user, so Kubernetes' runAsNonRoot can check it"
    deployment = yaml.safe_load((REPO / "deploy/k8s/base/deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 4180

    # Nothing is built or installed in the runtime stage: it only receives the finished virtualenv.
    assert pip_installs(final) == []
    assert not any(re.search(r"\bapt(-get)? install\b", run) for run in final.all("RUN"))
    copies = [shlex.split(c) for c in final.all("COPY")]
    assert copies and all(c[0].startswith("--from=") for c in copies)
    # The file names the test that builds and runs it.
    assert "tests/deploy/test_image.py" in DOCKERFILE.read_text().split("FROM", 1)[0]


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    for path in ("pyproject.toml", "README.md", "LICENSE", "gateway/cli.py", "gateway/py.typed",
                 "upstreams/oidc/provider.py", *(p.relative_to(REPO).as_posix() for p in MIGRATIONS.rglob("*.sql"))):
        assert in_context(path), f"{path} must reach the build"
    for path in (".git/config", ".venv/bin/python", "tests/test_cli.py", "gateway.db", "gateway-dev.db",
                 "gateway/__pycache__/cli.cpython-311.pyc", "deploy/k8s/base/secret.example.yaml", ".env",
                 "bench/__main__.py", "build/lib/gateway/cli.py", "forward_auth_gateway.egg-info/PKG-INFO"):
        assert not in_context(path), f"{path} must stay out of the build context"


# --- the install, for real ---------------------------------------------------------------------------------


def require_installs() -> None:
    """Skip a test that installs from PyPI when GATEWAY_TEST_SKIP_INSTALL=1 (refused under GATEWAY_TEST_STRICT=1)."""
    if os.environ.get("GATEWAY_TEST_SKIP_INSTALL") == "1":
        if os.environ.get("GATEWAY_TEST_STRICT") == "1":
            pytest.fail("GATEWAY_TEST_SKIP_INSTALL=1 is not allowed with GATEWAY_TEST_STRICT=1", pytrace=False)
        pytest.skip("GATEWAY_TEST_SKIP_INSTALL=1")


def _clean_env(venv: Path | None, **extra: str) -> dict[str, str]:
    # Keep PIP_* (a CI may point pip at a mirror); drop what would leak this test run's Python, settings or
    # make variables (`make test VENV=...` passes VENV on to every make below it through MAKEFLAGS).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                                "MAKEFLAGS", "MFLAGS", "MAKELEVEL"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    if venv is not None:
        env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{shlex.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_install_command_works_in_a_clean_virtualenv(tmp_path: Path) -> None:
    require_installs()
    source = assemble_build_dir(build_stage(), tmp_path / "image")
    assert (source / "pyproject.toml").is_file()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = _clean_env(venv)
    _run([str(venv / "bin" / INSTALL_COMMAND[0]), *INSTALL_COMMAND[1:]], env, cwd=source, timeout=INSTALL_TIMEOUT)

    work = tmp_path / "work"  # not the checkout: nothing may be imported from the repository
    work.mkdir()
    gateway = str(venv / "bin" / "gateway")
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _run([gateway, "--version"], env, work).stdout.strip() == f"gateway {version}"

    where = _run([str(venv / "bin" / "python"), "-c",
                  "import gateway, uvloop; print(gateway.__file__)"], env, work).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"gateway imported from {where}, not the venv"

    # Every migration of both dialects is in the installed package.
    listing = _run([str(venv / "bin" / "python"), "-c",
                    "import json\nfrom importlib import resources\n"
                    "root = resources.files('gateway.store').joinpath('migrations')\n"
                    "print(json.dumps(sorted(f'{d.name}/{f.name}' for d in root.iterdir() if d.is_dir()"
                    " for f in d.iterdir() if f.name.endswith('.sql'))))"], env, work).stdout
    expected = sorted(p.relative_to(MIGRATIONS).as_posix() for p in MIGRATIONS.glob("*/*.sql"))
    assert expected and json.loads(listing) == expected

    config = work / "gateway.toml"
    config.write_text('listen = "0.0.0.0:4180"\npublic_url = "https://auth.example.com"\n'
                      f'database_url = "sqlite:///{work / "gateway.db"}"\nmigrate_on_start = false\n'
                      'log_format = "json"\n')
    checked = _run([gateway, "check-config", "--config", str(config)], env, work)
    assert "configuration OK" in checked.stdout

    migrated = _run([gateway, "migrate", "--config", str(config)], env, work).stdout.splitlines()
    assert migrated == [f"applied {p.stem}" for p in sorted((MIGRATIONS / "sqlite").glob("*.sql"))]
    assert _run([gateway, "migrate", "--config", str(config)], env, work).stdout.strip() == "schema is current"
    connected = _run([gateway, "check-config", "--connect", "--config", str(config)], env, work)
    assert "schema current" in connected.stdout + connected.stderr


# --- `make run` on a fresh clone ---------------------------------------------------------------------------

# What `make run` installs: the package with the `speed` extra, nothing of the `test` extra. Measured on
# CPython 3.11, Linux x86-64, as the sum of file sizes: 80 MB (89 MB on disk), against 425 MB (486 MB on
# disk) once `make test` has added the test tools.
RUN_VENV_LIMIT_MB = 150


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir() or p.is_symlink())


def test_make_run_installs_only_what_serving_needs(tmp_path: Path, record_property: Callable[[str, object], None]
                                                   ) -> None:
    require_installs()
    make = shutil.which("make")
    if make is None:
        if os.environ.get("GATEWAY_TEST_STRICT") == "1":
            pytest.fail("make not found (GATEWAY_TEST_STRICT=1)", pytrace=False)
        pytest.skip("make not found")
    # A fresh clone, as far as `make run` reads it (the working tree's files, so uncommitted changes count).
    clone = tmp_path / "clone"
    for folder in ("gateway", "upstreams", "config"):
        shutil.copytree(REPO / folder, clone / folder, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
    for name in ("Makefile", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, clone / name)

    port = free_port()
    env = _clean_env(None, GATEWAY_LISTEN=f"127.0.0.1:{port}")
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        # A session of its own, so make and the gateway it starts are stopped together.
        served = subprocess.Popen([make, "run"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + INSTALL_TIMEOUT
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as ready:
                        assert ready.status == 200
                        break
                except OSError:
                    assert served.poll() is None, f"make run exited {served.returncode}:\n{log.read_text()}"
                    assert time.monotonic() < deadline, f"make run never became ready:\n{log.read_text()}"
                    time.sleep(0.2)
        finally:
            os.killpg(served.pid, signal.SIGTERM)
            served.wait(30)

    venv = clone / ".venv"
    installed = set(json.loads(_run([str(venv / "bin" / "python"), "-c",
                                     "import json\nfrom importlib import metadata\n"
                                     "print(json.dumps([d.metadata['Name'] for d in metadata.distributions()]))"],
                                    _clean_env(venv), clone).stdout))
    installed = {_canonical(name) for name in installed}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test_tools = {_canonical(re.match(r"[A-Za-z0-9._-]+", req)[0]) for req in extras["test"]}  # type: ignore[index]
    assert {"pytest", "mypy", "playwright", "ruff"} <= test_tools
    assert {"forward-auth-gateway", "uvloop"} <= installed
    assert not installed & test_tools, f"make run installed test tools: {sorted(installed & test_tools)}"

    size_mb = _tree_bytes(venv) / 2**20
    record_property("make_run_venv_mb", round(size_mb, 1))
    print(f"make run's venv: {size_mb:.1f} MB")  # shown with -rP
    assert size_mb < RUN_VENV_LIMIT_MB, f"make run's venv is {size_mb:.0f} MB"

    # One venv for both targets: after `make run`, its install is current and `make test` adds only the
    # test extra to the same venv, which then counts as a run install too.
    make_env = _clean_env(None)
    assert subprocess.run([make, "-q", ".venv/bin/.installed-run"], cwd=clone, env=make_env).returncode == 0
    assert subprocess.run([make, "-q", ".venv/bin/.installed-test"], cwd=clone, env=make_env).returncode == 1
    plan = _run([make, "-n", ".venv/bin/.installed-test"], make_env, clone).stdout
    assert "-m venv" not in plan and "-e '.[test,speed]'" in plan and ".venv/bin/.installed-run" in plan
