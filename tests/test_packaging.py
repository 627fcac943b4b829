"""Packaging: the sdist carries what its tests read, the metadata states the license and the Pythons that
``make matrix`` tests, and the matrix finds those Pythons or, under GATEWAY_TEST_STRICT=1, fails without one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.deploy.test_install import require_installs

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, the canonical Apache License 2.0 text.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"

# Tracked files the sdist leaves out, each with the reason.
NOT_IN_SDIST = {
    ".gitignore": "git's own bookkeeping: an unpacked sdist is no git checkout, and no test reads it",
}

# Tests run from the unpacked sdist: each reads files outside the packages (README, Makefile, .ci/run,
# deploy/, config/, bench/ and tests/ themselves).
SDIST_SPOT_CHECKS = [
    "tests/test_readme.py::test_quick_start_commands_exist_and_ci_runs_the_same_test_command",
    "tests/test_readme.py::test_deploy_snippets_are_the_files",
    "tests/test_readme.py::test_every_toml_snippet_is_a_valid_config",
    "tests/test_config_typos.py::test_every_variable_the_test_suite_reads_is_excused_or_a_setting",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        pytest.fail(f"{reason} (GATEWAY_TEST_STRICT=1)", pytrace=False)
    pytest.skip(reason)


def _env(**extra: str) -> dict[str, str]:
    """This run's environment without what would steer the commands under test (settings, make variables)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"))}
    env.update(extra)
    return env


def _make() -> str:
    make = shutil.which("make")
    if make is None:
        _unavailable("make not found")
    assert make is not None
    return make


# --- metadata ----------------------------------------------------------------------------------------------


def claimed_pythons() -> list[str]:
    """The Python versions the trove classifiers claim, in order ("3.11", ...)."""
    return [c.rsplit(" ", 1)[1] for c in PYPROJECT["project"]["classifiers"]
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]


def test_license_is_apache_2_stated_once() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert hashlib.sha256((REPO / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256
    # Beside an SPDX expression setuptools refuses `License ::` classifiers, and PEP 639 deprecates them.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]  # the first with PEP 639 metadata


def test_matrix_and_tools_cover_exactly_the_claimed_pythons() -> None:
    claimed = claimed_pythons()
    assert claimed == ["3.11", "3.12", "3.13"]
    matrix = re.search(r"^MATRIX_PYTHONS \?= (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert matrix and matrix.group(1).split() == claimed
    oldest = claimed[0]
    assert PYPROJECT["project"]["requires-python"] == f">={oldest}"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")
    assert PYPROJECT["tool"]["mypy"]["python_version"] == oldest


# --- make matrix: finding the interpreters -----------------------------------------------------------------


def test_matrix_missing_python_is_a_note_or_under_strict_a_failure(tmp_path: Path) -> None:
    args = [_make(), "--no-print-directory", "-C", str(REPO), "matrix", "MATRIX_PYTHONS=3.99",
            f"PYENV_ROOT={tmp_path}"]
    lenient = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert lenient.returncode == 0, lenient.stderr
    assert "matrix: no working python3.99, not tested" in lenient.stdout
    strict = subprocess.run(args, env=_env(GATEWAY_TEST_STRICT="1"), capture_output=True, text=True, timeout=60,
                            check=False)
    assert strict.returncode != 0
    assert "matrix: Python 3.99 missing (GATEWAY_TEST_STRICT=1)" in strict.stderr


def _plan_matrix(version: str, path: str, *settings: str) -> str:
    """What ``make -n matrix`` for ``version`` would do: make prints the install and test commands instead of
    running them, but runs the recipe that calls $(MAKE), so the interpreter search itself is real."""
    planned = subprocess.run([_make(), "-n", "--no-print-directory", "-C", str(REPO), "matrix",
                              f"MATRIX_PYTHONS={version}", *settings],
                             env=_env(PATH=path), capture_output=True, text=True, timeout=60, check=False)
    assert planned.returncode == 0, planned.stderr
    return planned.stdout


def test_matrix_skips_a_broken_shim_for_a_pyenv_interpreter(tmp_path: Path) -> None:
    """pyenv's shims exist for every installed version but fail outside it; the matrix tries the next one."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / f"python{version}"
    shim.write_text(f"#!/bin/sh\necho 'pyenv: python{version}: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    interpreter = tmp_path / "pyenv" / "versions" / f"{version}.99" / "bin" / f"python{version}"
    interpreter.parent.mkdir(parents=True)
    interpreter.symlink_to(sys.executable)
    # PYTHON (make test's interpreter) is none here, so this version gets a venv of its own.
    plan = _plan_matrix(version, f"{shims}{os.pathsep}{os.environ['PATH']}", f"PYENV_ROOT={tmp_path / 'pyenv'}",
                        f"PYTHON={tmp_path / 'no-python'}")
    assert f"matrix: Python {version} ({interpreter}, in .venv-{version})" in plan
    assert f".venv-{version}/bin/pytest -q" in plan


def test_matrix_tests_make_tests_python_in_make_tests_venv(tmp_path: Path) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    plan = _plan_matrix(version, os.environ["PATH"], f"PYTHON={sys.executable}", f"VENV={tmp_path / 'venv'}",
                        "MATRIX_LIGHT=1")
    assert f"matrix: Python {version} ({sys.executable}, in {tmp_path / 'venv'})" in plan
    assert f"{tmp_path / 'venv'}/bin/pytest -q" in plan
    assert "--ignore=tests/test_cli.py" in plan  # the light mode
    assert not (tmp_path / "venv").exists()


# --- the sdist ---------------------------------------------------------------------------------------------


def test_sdist_carries_every_tracked_file_and_its_tests_run_from_it(tmp_path: Path) -> None:
    require_installs()  # the build backend (setuptools) comes from PyPI into an isolated environment
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist, say): nothing to compare the sdist with")
    git = shutil.which("git")
    if git is None:
        _unavailable("git not found")
    if importlib.util.find_spec("build") is None:
        _unavailable("the build package is not installed (pip install build)")
    assert git is not None

    def git_files(*options: str) -> set[str]:
        listed = subprocess.run([git, "-C", str(REPO), "ls-files", "-z", *options], capture_output=True, text=True,
                                check=True).stdout.split("\0")
        return {name for name in listed if name and (REPO / name).is_file()}  # not those deleted meanwhile

    # Built from a copy of the working tree without what git ignores: setuptools would otherwise reuse the
    # checkout's egg-info/SOURCES.txt from an earlier build and ship what it lists. Leftovers a checkout
    # collects are planted instead, to prove MANIFEST.in keeps them out.
    source = tmp_path / "source"
    for name in git_files("--cached", "--others", "--exclude-standard"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    planted = ["tests/__pycache__/helpers.cpython-311.pyc", "tests/gateway.db", "bench/results/run.json"]
    for name in planted:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("left over\n")
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(source)],
                           env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
        top = members[0].split("/")[0]
        shipped = {name.split("/", 1)[1] for name in members if "/" in name}
        archive.extractall(tmp_path / "unpacked", filter="data")

    tracked = git_files("--cached")
    assert set(NOT_IN_SDIST) <= tracked, "NOT_IN_SDIST names a file git no longer tracks"
    missing = sorted(tracked - shipped - set(NOT_IN_SDIST))
    assert not missing, f"the sdist lacks tracked files (MANIFEST.in): {missing}"
    leftovers = re.compile(r"(^|/)(__pycache__|\.venv[^/]*|\.git)/|\.py[cod]$|\.db(-wal|-shm)?$")
    junk = sorted(n for n in shipped if leftovers.search(n) or n in planted)
    assert not junk, f"the sdist carries build or run leftovers: {junk}"

    root = tmp_path / "unpacked" / top
    metadata = (root / "PKG-INFO").read_text()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()

    # Run from the unpacked sdist (its rootdir comes first on sys.path), tests that read its non-package files.
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SDIST_SPOT_CHECKS],
                         cwd=root, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"{len(SDIST_SPOT_CHECKS)} passed" in ran.stdout
