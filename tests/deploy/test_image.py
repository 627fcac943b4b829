"""The container image, built and run for real, and the Kubernetes manifests that run it.

Always: the Kubernetes workloads run as the Dockerfile's numeric user and group with a read-only root
filesystem, and their liveness and startup probes ask the path and port of the Dockerfile's HEALTHCHECK.

With GATEWAY_TEST_IMAGE=1 (root, podman and mmdebstrap needed; runc too where crun cannot run, see
``_run_flags``): deploy/container/build-offline.sh builds the Dockerfile with podman on a python3 base made
from Debian's packages, as no container registry is reachable in CI. An image already built from the same
build context (tagged with its hash) is reused. The image then runs as the README shows -- ``--read-only``,
``--tmpfs /tmp``, its own user -- and must answer ``/healthz`` and ``/auth/check`` from the host, pass its
HEALTHCHECK, keep its SQLite database on the data volume, hold no compiler or test tools, and stay under
``SIZE_LIMIT``. The module takes about 80 s when the build downloads Debian packages and PyPI wheels, about
20 s with the base cached (under ~/.cache/forward-auth-gateway), and 5 s when the image is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Test dependencies (the `test` extra); without them the module is skipped, and under GATEWAY_TEST_STRICT=1
# the import error fails the run.
try:
    import yaml
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        raise
    pytest.skip(f"{exc.name} is not installed (pip install pyyaml)", allow_module_level=True)

from tests.deploy.stack import wait_until
from tests.deploy.test_install import DOCKERFILE, DOCKERIGNORE, REPO, dockerfile_stages, exec_form, in_context
from tests.helpers import free_port

BUILD_SCRIPT = REPO / "deploy" / "container" / "build-offline.sh"
README = REPO / "README.md"
IMAGE_REPOSITORY = "localhost/forward-auth-gateway"
K8S_WORKLOADS = [REPO / "deploy/k8s/base/deployment.yaml", REPO / "deploy/k8s/base/migration-job.yaml"]
# Measured 212 MB (the bookworm python3 base 124 MB, the virtualenv 88 MB); the README states them.
SIZE_LIMIT = 250_000_000
BUILD_TIMEOUT = 900
# Not in the image: a compiler (every dependency ships wheels) nor, below, the test extra.
ABSENT_COMMANDS = ["gcc", "cc", "c++", "clang", "make", "ld", "as"]


# --- the Dockerfile's promises, statically -----------------------------------------------------------------


@dataclass(frozen=True)
class Healthcheck:
    command: list[str]
    port: int
    path: str


def image_user() -> tuple[int, int]:
    """The final stage's ``USER uid:gid``, both numeric."""
    (user,) = dockerfile_stages()[-1].all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: numeric uid:gid, so runAsNonRoot can check it"
    return int(uid), int(gid)


def dockerfile_healthcheck() -> Healthcheck:
    """The final stage's HEALTHCHECK command and the loopback URL it asks."""
    (args,) = dockerfile_stages()[-1].all("HEALTHCHECK")
    _options, _, command = args.partition("CMD ")
    words = exec_form(command)
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", " ".join(words))
    assert url, f"HEALTHCHECK {args}: no http://127.0.0.1:PORT/PATH in it"
    return Healthcheck(words, int(url.group(1)), url.group(2))


@pytest.fixture(params=K8S_WORKLOADS, ids=[p.name for p in K8S_WORKLOADS])
def workload(request: pytest.FixtureRequest) -> dict[str, Any]:
    return yaml.safe_load(request.param.read_text())  # type: ignore[no-any-return]


def test_kubernetes_runs_the_image_user_on_a_read_only_root(workload: dict[str, Any]) -> None:
    uid, gid = image_user()
    assert uid != 0
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for where, context in (("pod", pod["securityContext"]), ("container", container["securityContext"])):
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), f"{where} securityContext"
        assert context["runAsNonRoot"] is True, f"{where} securityContext"
    assert pod["securityContext"]["fsGroup"] == gid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_kubernetes_probes_ask_what_the_healthcheck_asks() -> None:
    healthcheck = dockerfile_healthcheck()
    assert dockerfile_stages()[-1].all("EXPOSE") == [str(healthcheck.port)]
    (container,) = yaml.safe_load(K8S_WORKLOADS[0].read_text())["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind in ("livenessProbe", "startupProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] == healthcheck.path, kind
        assert ports.get(probe["port"], probe["port"]) == healthcheck.port, kind


# --- the image, for real -----------------------------------------------------------------------------------


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def build_context_hash() -> str:
    """A hash of what the image is made of: the Dockerfile, the build script, and every file the COPY lines
    send (less what .dockerignore excludes)."""
    digest = hashlib.sha256()
    sources: list[Path] = [DOCKERFILE, DOCKERIGNORE, BUILD_SCRIPT]
    for stage in dockerfile_stages():
        for copy in stage.all("COPY"):
            words = copy.split()
            if not any(w.startswith("--from=") for w in words):
                sources += [REPO / w for w in words[:-1] if not w.startswith("--")]
    files = sorted({f for s in sources for f in ([s] if s.is_file() else s.rglob("*")) if f.is_file()})
    for file in files:
        relative = file.relative_to(REPO).as_posix()
        if file in (DOCKERFILE, DOCKERIGNORE, BUILD_SCRIPT) or in_context(relative):
            digest.update(relative.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _run_flags() -> list[str]:
    """``podman run`` flags this machine needs; none of them changes what the image does."""
    # Explicit limits below any host's: podman's defaults for root (1048576 open files) exceed the hard
    # limits of CI VMs, and raising a hard limit needs CAP_SYS_RESOURCE, which they withhold.
    flags = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
    # crun (podman's default runtime) refuses cgroup "hybrid" mode, v1 controllers plus one left on the
    # v2 hierarchy, as on the CI VMs; runc runs there.
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if unified.is_file() and unified.read_text().strip():
        assert shutil.which("runc"), "cgroup hybrid mode: crun cannot run containers here, install runc"
        flags += ["--runtime", "runc"]
    return flags


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from this checkout, tagged with its build context's hash (reused when present)."""
    if os.environ.get("GATEWAY_TEST_IMAGE") != "1":
        pytest.skip("builds a container image (minutes, downloads): set GATEWAY_TEST_IMAGE=1")
    missing = [tool for tool in ("podman", "mmdebstrap") if not shutil.which(tool)]
    assert not missing, f"GATEWAY_TEST_IMAGE=1 needs {', '.join(missing)} (apt-get install podman mmdebstrap)"
    assert os.geteuid() == 0, "GATEWAY_TEST_IMAGE=1 needs root (mmdebstrap, rootful podman)"
    tag = f"{IMAGE_REPOSITORY}:test-{build_context_hash()}"
    if _podman("image", "exists", tag, check=False).returncode != 0:
        proc = subprocess.run([str(BUILD_SCRIPT), tag, str(REPO)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False)
        assert proc.returncode == 0, f"{BUILD_SCRIPT.name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        # Images of earlier trees are never reused: keep one.
        listed = _podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPOSITORY).stdout.split()
        stale = [name for name in listed if name.startswith(f"{IMAGE_REPOSITORY}:test-") and name != tag]
        if stale:
            _podman("rmi", *stale, check=False)
    return tag


@dataclass(frozen=True)
class Container:
    name: str
    port: int

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _podman("exec", self.name, *command, check=check)


def _get(port: int, path: str) -> tuple[int, bytes]:
    """The status and body of ``GET path`` on the host's published ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def readme_run_command() -> list[str]:
    """The README's ``docker run`` command (section "Container image"), as arguments."""
    section = README.read_text().partition("\n## Container image\n")[2].partition("\n## ")[0]
    (block,) = re.findall(r"```sh\n(docker run .*?)```", section, re.S)
    return shlex.split(block.replace("\\\n", " "))


def test_readme_runs_the_image_read_only_with_a_tmpfs_and_a_data_volume() -> None:
    words = readme_run_command()
    assert "--read-only" in words
    assert words[words.index("--tmpfs") + 1] == "/tmp"
    assert words[words.index("-v") + 1].endswith(":/var/lib/gateway")
    assert words[words.index("-p") + 1] == "4180:4180"


def podman_run_command(image: str, name: str, volume: str, port: int, log: Path) -> list[str]:
    """The README's command for podman: this test's image, container name, volume and host port, the
    image's user stated, the log in a file, and what this machine needs (``_run_flags``)."""
    docker, run, *words, _image = readme_run_command()
    assert (docker, run) == ("docker", "run")
    replaced = {"--name": name, "-p": f"127.0.0.1:{port}:4180", "-v": f"{volume}:/var/lib/gateway"}
    for flag, value in replaced.items():
        words[words.index(flag) + 1] = value
    uid, gid = image_user()
    # podman, unlike Docker, mounts tmpfs on /run and /var/tmp too under --read-only: not here.
    return ["run", *_run_flags(), "--user", f"{uid}:{gid}", "--read-only-tmpfs=false",
            "--log-driver", "k8s-file", "--log-opt", f"path={log}", *words, image]


@pytest.fixture(scope="module")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The image running as the README shows: read-only root, a tmpfs on /tmp, a data volume, port 4180."""
    running = Container(f"gateway-image-test-{os.getpid()}", free_port())
    volume = f"{running.name}-data"
    log = tmp_path_factory.mktemp("container") / "gateway.log"

    def answering() -> bool:
        state = _podman("inspect", "--format", "{{.State.Status}}", running.name).stdout.strip()
        assert state == "running", f"the container is {state}:\n{log.read_text(errors='replace')}"
        try:
            return _get(running.port, "/healthz")[0] == 200
        except OSError:
            return False

    _podman(*podman_run_command(image, running.name, volume, running.port, log))
    try:
        wait_until(answering, "the gateway in its container", timeout=60, log=log)
        yield running
    finally:
        _podman("rm", "--force", running.name, check=False)
        _podman("volume", "rm", "--force", volume, check=False)


def test_gateway_answers_from_the_host(container: Container) -> None:
    assert _get(container.port, "/healthz") == (200, b'{"status": "ok"}')
    status, _ = _get(container.port, "/auth/check")
    assert status == 401, "a check without a session must be refused"


def test_gateway_runs_as_the_image_user(container: Container) -> None:
    uid, gid = image_user()
    status = container.exec("cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
    assert re.search(rf"^Gid:\s+{gid}\s+{gid}\s+{gid}\s+{gid}$", status, re.M), status
    cmdline = container.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[1:4] == ["/opt/venv/bin/gateway", "serve", "--listen"], cmdline


def test_root_filesystem_is_read_only_and_data_lives_on_the_volume(container: Container) -> None:
    assert _podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container.name).stdout.strip() == "true"
    for path in ("/opt/venv/written-by-test", "/var/written-by-test"):
        refused = container.exec("touch", path, check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, path
    container.exec("touch", "/tmp/written-by-test")  # the tmpfs
    # The SQLite default (sqlite:///gateway.db in the working directory) is on the image's data volume.
    mounts = json.loads(_podman("inspect", "--format", "{{json .Mounts}}", container.name).stdout)
    assert [m["Destination"] for m in mounts] == ["/var/lib/gateway"]
    container.exec("test", "-s", "/var/lib/gateway/gateway.db")


def test_healthcheck_reports_healthy(image: str, container: Container) -> None:
    configured = json.loads(_podman("image", "inspect", "--format", "{{json .HealthCheck}}", image).stdout)
    assert configured and configured["Test"] == ["CMD", *dockerfile_healthcheck().command], \
        "the image lost its HEALTHCHECK (the OCI format has none: build with --format docker)"
    _podman("healthcheck", "run", container.name)
    health = _podman("inspect", "--format", "{{.State.Health.Status}}", container.name).stdout.strip()
    assert health == "healthy"


def _distribution(requirement: str) -> str:
    """A requirement's distribution name, normalised as PEP 503 does (``PyYAML>=6`` -> ``pyyaml``)."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def test_no_compiler_or_test_tools_inside(container: Container) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    probe = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
    installed = {_distribution(name) for name in container.exec("python", "-c", probe).stdout.split()}
    assert {_distribution(project["name"]), *map(_distribution, project["optional-dependencies"]["speed"])} \
        <= installed, "the package and its speed extra are installed"
    test_tools = {_distribution(r) for r in project["optional-dependencies"]["test"]}
    assert test_tools, "the test extra lists the test tools"
    assert sorted(installed & test_tools) == []
    commands = container.exec("sh", "-c", f"command -v {' '.join(ABSENT_COMMANDS)}", check=False).stdout
    assert commands.split() == []


def test_image_size_is_bounded(image: str) -> None:
    size = int(_podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size < SIZE_LIMIT, f"{size / 1e6:.0f} MB (limit {SIZE_LIMIT / 1e6:.0f} MB)"
