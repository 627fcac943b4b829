"""deploy/gateway-api: every manifest is valid against its published schema, and the wiring keeps its promises.

Schemas: the Gateway API, Envoy Gateway and Istio CRDs' ``openAPIV3Schema`` vendored in ``schemas/`` (source
repositories and commits in ``schemas/README.md``), checked with ``jsonschema`` the way the API server checks
fields with ``kubectl apply``'s default strict field validation (an unknown field is an error); built-in
kinds through ``kubernetes-validate`` (Kubernetes 1.30, strict); the Istio mesh configuration
(``istiod-values.yaml``, not a Kubernetes object) against the MeshConfig fields of Istio's ``config.proto``.
The CRDs' CEL rules (``x-kubernetes-validations``) are not evaluated; the semantic tests below cover the
ones these files depend on.

Semantics: the ext_authz settings ask the gateway Service of ``deploy/k8s`` the same questions as
``deploy/envoy/envoy.yaml`` (whose requests ``test_proxy_replays.py`` replays against a real gateway), the
identity headers are exactly the ones the gateway sets, client copies cannot reach the app, and the
sign-in pages are routed to the gateway and nothing else of it is published. Last, the check requests these
settings make ext_authz send are answered by a real gateway: browser mode comes from the gateway's setting,
never from the user's query, and every identity header is in its 200, so Envoy's set replaces every client copy.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from multidict import CIMultiDict

from gateway.handlers.check import IDENTITY_HEADERS
from gateway.settings import Settings

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        raise
    pytest.skip(f"{exc.name} is not installed (pip install pyyaml jsonschema kubernetes-validate)",
                allow_module_level=True)

from tests.deploy.test_k8s import (
    EXAMPLE,
    KUBERNETES_VERSION,
    effective_settings,
    find,
    gateway_deployment,
    one,
    only_container,
    render,
    selects,
)
from tests.harness import Gateway, GatewayFactory

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
GATEWAY_API = REPO / "deploy" / "gateway-api"
ENVOY_GATEWAY = GATEWAY_API / "envoy-gateway"
ISTIO = GATEWAY_API / "istio"
ROUTES = GATEWAY_API / "routes"
ISTIOD_VALUES = ISTIO / "istiod-values.yaml"
MESH_PROTO = SCHEMAS / "istio.mesh.v1alpha1.extension_provider.proto"
ENVOY_FILE = REPO / "deploy" / "envoy" / "envoy.yaml"
KUSTOMIZATIONS = [ENVOY_GATEWAY, ISTIO]
MANIFESTS = sorted(p for p in GATEWAY_API.rglob("*.yaml") if p.name != "kustomization.yaml" and p != ISTIOD_VALUES)
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
# Headers that describe the original request: the gateway believes them from a trusted proxy, so a check
# must never carry a client's copy.
FORWARDED_DESCRIPTIONS = ("x-original-", "x-forwarded-uri", "x-forwarded-host", "x-forwarded-method", "x-real-ip")
METADATA_FIELDS = {"name", "namespace", "labels", "annotations"}

Doc = dict[str, Any]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML as kubectl reads it with strict field validation: a key given twice is an error, not the last wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
        if duplicates:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate field {', '.join(duplicates)}",
                                                    node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_docs(text: str) -> list[Doc]:
    return [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc]


def load_docs(path: Path) -> list[Doc]:
    return parse_docs(path.read_text())


def lower(names: list[str]) -> list[str]:
    return [name.lower() for name in names]


def seconds(duration: str) -> float:
    """A Gateway API / Envoy Gateway / Istio duration ("60s", "1m30s", "500ms") in seconds."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)


# --- schemas -------------------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused wherever the API server would refuse them.

    A structural CRD schema lists an object's fields under ``properties``; with strict field validation (kubectl's
    default) any other field is an error, unless the schema says ``x-kubernetes-preserve-unknown-fields`` or has
    its own ``additionalProperties`` (a map).
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """``(apiVersion, kind)`` -> a validator for every vendored CRD version."""
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        crd = json.loads(path.read_text())
        # Every object has these, whether or not its CRD lists them (Istio's do not).
        top = crd["openAPIV3Schema"]
        top["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object"}, **top.get("properties", {})}
        schema = strict(top)
        # OpenAPI 3.0 schemas are draft 4 in the parts Kubernetes allows (boolean exclusiveMinimum and so on).
        jsonschema.Draft4Validator.check_schema(schema)
        validators[(f"{crd['group']}/{crd['version']}", crd["kind"])] = jsonschema.Draft4Validator(schema)
    return validators


def schema_problems(doc: Doc) -> list[str]:
    """Every way ``doc`` fails its published schema (empty when it is valid)."""
    problems = [f"metadata.{field}: unknown field" for field in sorted(set(doc.get("metadata", {})) - METADATA_FIELDS)]
    validator = crd_validators().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if validator is not None:
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        return problems + [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        problems.append(f"no schema for {doc.get('apiVersion')} {doc.get('kind')}: vendor its CRD in {SCHEMAS.name}/")
    except kubernetes_validate.ValidationError as exc:
        problems.append(f"{'.'.join(map(str, exc.path)) or '(top)'}: {exc.message}")
    return problems


_PROTO_FIELD = re.compile(r"(repeated\s+)?(map<\s*\w+\s*,\s*\w+\s*>|[\w.]+)\s+(\w+)\s*=\s*\d+\s*(\[[^\]]*\])?\s*;")
_PROTO_SCALARS: dict[str, Doc] = {
    "string": {"type": "string"},
    "bool": {"type": "boolean"},
    "uint32": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    # protojson's Duration: seconds with an "s" suffix ("1s", "0.5s").
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@functools.cache
def mesh_config_schema() -> Doc:
    """A JSON schema for MeshConfig's extension providers, built from the vendored ``config.proto`` excerpt.

    Fields by their JSON (camelCase) names, unknown fields refused, at most one member of a ``oneof``; message
    types the excerpt cuts (the other providers) are plain objects.
    """
    text = re.sub(r"//[^\n]*", "", MESH_PROTO.read_text())
    messages: dict[str, Doc] = {}
    stack: list[tuple[str, str]] = []  # (kind, name) of the open blocks
    for line in text.splitlines():
        line = line.strip()
        opened = re.fullmatch(r"(message|oneof)\s+(\w+)\s*\{", line)
        if opened:
            stack.append((opened.group(1), opened.group(2)))
            if opened.group(1) == "message":
                messages[opened.group(2)] = {"fields": {}, "oneofs": []}
            else:
                message = [n for k, n in stack if k == "message"][-1]
                messages[message]["oneofs"].append([])
            continue
        if line == "}":
            stack.pop()
            continue
        field = _PROTO_FIELD.fullmatch(line)
        if field and stack:
            message = [n for k, n in stack if k == "message"][-1]
            repeated, type_name, name = bool(field.group(1)), field.group(2), _camel(field.group(3))
            messages[message]["fields"][name] = (repeated, type_name)
            if stack[-1][0] == "oneof":
                messages[message]["oneofs"][-1].append(name)
        elif line and not line.startswith(("syntax", "package", "option")):
            raise AssertionError(f"{MESH_PROTO.name}: cannot read {line!r}")
    assert not stack, f"{MESH_PROTO.name}: unbalanced braces"

    def type_schema(type_name: str) -> Doc:
        if type_name.startswith("map<"):
            return {"type": "object", "additionalProperties": {"type": "string"}}
        if type_name in _PROTO_SCALARS:
            return _PROTO_SCALARS[type_name]
        if type_name in messages:
            return {"$ref": f"#/definitions/{type_name}"}
        return {"type": "object"}  # a message the excerpt cuts

    definitions: dict[str, Doc] = {}
    for message_name, fields in messages.items():
        properties: dict[str, Doc] = {}
        for field_name, (repeated, type_name) in fields["fields"].items():
            item = type_schema(type_name)
            properties[field_name] = {"type": "array", "items": item} if repeated else item
        definitions[message_name] = {
            "type": "object", "properties": properties, "additionalProperties": False,
            "allOf": [{"not": {"anyOf": [{"required": [a, b]} for a in oneof for b in oneof if a < b]}}
                      for oneof in fields["oneofs"] if len(oneof) > 1],
        }
    return {"definitions": definitions, "$ref": "#/definitions/MeshConfig"}


def mesh_values_problems(values: Doc) -> list[str]:
    """Every way istiod Helm values fail the MeshConfig definition (only ``meshConfig`` is checked)."""
    problems = [f"{key}: not a mesh setting" for key in sorted(set(values) - {"meshConfig"})]
    validator = jsonschema.Draft4Validator(mesh_config_schema())
    for error in sorted(validator.iter_errors(values.get("meshConfig", {})), key=lambda e: list(map(str, e.path))):
        problems.append(f"meshConfig.{'.'.join(map(str, error.absolute_path))}: {error.message}")
    return problems


# --- every file ----------------------------------------------------------------------------------------------


def _documents() -> Iterator[tuple[str, Doc]]:
    for path in MANIFESTS:
        for index, doc in enumerate(load_docs(path)):
            yield f"{_rel(path)}#{index}:{doc.get('kind')}", doc


@pytest.mark.parametrize(("where", "doc"), list(_documents()), ids=[w for w, _ in _documents()])
def test_every_manifest_matches_its_published_schema(where: str, doc: Doc) -> None:
    assert schema_problems(doc) == [], where


def test_istiod_values_match_the_mesh_config_definition() -> None:
    (values,) = load_docs(ISTIOD_VALUES)
    assert mesh_values_problems(values) == []


def test_every_file_is_covered() -> None:
    kinds = {doc["kind"] for _, doc in _documents()}
    assert {"Gateway", "HTTPRoute", "SecurityPolicy", "ClientTrafficPolicy", "AuthorizationPolicy",
            "NetworkPolicy", "DestinationRule"} <= kinds
    assert set(GATEWAY_API.rglob("*.yaml")) == {*MANIFESTS, ISTIOD_VALUES, *(d / "kustomization.yaml" for d in
                                                                             [*KUSTOMIZATIONS, ROUTES])}


# A broken copy of each kind of file must fail: a typo'd field name (the commonest mistake, and the one plain
# CRD schemas would let through without strict field validation), a value outside an enum, a wrong type.
BROKEN_COPIES = [
    pytest.param("envoy-gateway/security-policy.yaml", "headersToBackend:", "headerToBackend:", id="sp-field"),
    pytest.param("envoy-gateway/security-policy.yaml", "      path: /auth/check", "      pathPrefix: /auth/check",
                 id="sp-istio-field-name"),
    pytest.param("envoy-gateway/security-policy.yaml", "failOpen: false", "failOpen: \"no\"", id="sp-type"),
    pytest.param("envoy-gateway/client-traffic-policy.yaml", "earlyRequestHeaders:", "earlyRequestHeader:",
                 id="ctp-field"),
    pytest.param("envoy-gateway/client-traffic-policy.yaml", "withUnderscoresAction: RejectRequest",
                 "withUnderscoresAction: Reject", id="ctp-enum"),
    pytest.param("envoy-gateway/gateway.yaml", "controllerName:", "controller:", id="gatewayclass-field"),
    pytest.param("istio/gateway.yaml", "hostname: auth.example.com\n", "hostname: auth.example.com\n      port: 8443\n",
                 id="gateway-duplicate-key"),
    pytest.param("istio/gateway.yaml", "      protocol: HTTPS\n      port: 443\n      hostname: auth",
                 "      protocol: HTTPS\n      port: 70000\n      hostname: auth", id="gateway-range"),
    pytest.param("routes/gateway-pages-route.yaml", "type: Exact\n            value: /\n",
                 "type: Exactly\n            value: /\n", id="route-enum"),
    pytest.param("routes/app-route.yaml", "    - backendRefs:", "    - backendRef:", id="route-field"),
    pytest.param("istio/authorization-policy.yaml", "notHosts:", "notHost:", id="ap-field"),
    pytest.param("istio/authorization-policy.yaml", "action: CUSTOM", "action: EXTERNAL", id="ap-enum"),
    pytest.param("istio/network-policy.yaml", "  podSelector:", "  podSelecter:", id="netpol-field"),
    pytest.param("istio/destination-rule.yaml", "idleTimeout:", "idle_timeout:", id="dr-field"),
    pytest.param("envoy-gateway/network-policy.yaml", "  name: gateway-from-envoy-gateway",
                 "  name: gateway-from-envoy-gateway\n  namespaces: auth", id="metadata-field"),
    pytest.param("istio/istiod-values.yaml", "headersToUpstreamOnAllow:", "headersToUpstreamOnAllowed:",
                 id="mesh-field"),
    pytest.param("istio/istiod-values.yaml", "headersToDownstreamOnAllow:", "headersToDownstreamOnSuccess:",
                 id="mesh-field-on-allow"),
    pytest.param("istio/istiod-values.yaml", "timeout: 1s", "timeout: 1000ms", id="mesh-duration"),
    pytest.param("istio/istiod-values.yaml", "      envoyExtAuthzHttp:",
                 "      envoyExtAuthzGrpc: {}\n      envoyExtAuthzHttp:", id="mesh-oneof"),
]


@pytest.mark.parametrize(("relative", "good", "bad"), BROKEN_COPIES)
def test_a_broken_copy_fails_validation(relative: str, good: str, bad: str) -> None:
    path = GATEWAY_API / relative
    text = path.read_text()
    assert text.count(good) == 1, f"{relative}: the table expects exactly one {good!r}"
    broken = text.replace(good, bad)
    if path == ISTIOD_VALUES:
        assert mesh_values_problems(parse_docs(text)[0]) == []
        assert mesh_values_problems(parse_docs(broken)[0]) != []
        return
    assert all(schema_problems(doc) == [] for doc in load_docs(path))
    try:
        broken_docs = parse_docs(broken)
    except yaml.constructor.ConstructorError as exc:
        assert "duplicate field" in str(exc)
        return  # refused before any schema, as kubectl would
    assert any(schema_problems(doc) for doc in broken_docs), f"{relative}: {bad!r} was accepted"


# --- the kustomizations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=[d.name for d in KUSTOMIZATIONS])
def test_kustomization_renders_every_file_of_its_folder(directory: Path) -> None:
    files = sorted(p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml" and p != ISTIOD_VALUES)
    expected = [doc for path in [*files, *ROUTES.glob("*.yaml")] if path.name != "kustomization.yaml"
                for doc in load_docs(path)]

    def key(doc: Doc) -> str:
        return json.dumps(doc, sort_keys=True)

    assert sorted(map(key, render(directory))) == sorted(map(key, expected))


# --- what the files must mean ------------------------------------------------------------------------------


@functools.cache
def _parsed(directory: Path) -> tuple[Doc, ...]:
    paths = [*directory.glob("*.yaml"), *ROUTES.glob("*.yaml")]
    return tuple(doc for p in paths if p.name != "kustomization.yaml" and p != ISTIOD_VALUES for doc in load_docs(p))


def objects(directory: Path) -> list[Doc]:
    """The Kubernetes objects a folder's kustomization applies, read from the files."""
    return copy.deepcopy(list(_parsed(directory)))


# The rendered example overlay and its gateway's effective settings, as test_k8s.py's fixtures of the same
# names give them (fixtures imported from another test module would shadow every test's parameters).
@pytest.fixture
def example() -> list[Doc]:
    return render(EXAMPLE)


@pytest.fixture
def example_settings(example: list[Doc], tmp_path: Path) -> Settings:
    return effective_settings(gateway_deployment(example), example, tmp_path)


def envoy_file_ext_authz() -> Doc:
    """The ext_authz filter of deploy/envoy/envoy.yaml, the configuration whose requests are replayed in tests."""
    (doc,) = load_docs(ENVOY_FILE)
    (listener,) = doc["static_resources"]["listeners"]
    (manager,) = [f["typed_config"] for f in listener["filter_chains"][0]["filters"]
                  if f["name"] == "envoy.filters.network.http_connection_manager"]
    (authz,) = [f["typed_config"] for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    return authz  # type: ignore[no-any-return]


def exact_names(patterns: list[Doc]) -> list[str]:
    assert all(set(p) == {"exact"} for p in patterns), "envoy.yaml lists header names exactly"
    return [p["exact"] for p in patterns]


def service_port(docs: list[Doc], name: str, namespace: str, port: int) -> Doc:
    """The rendered Service ``name`` in ``namespace``, asserting it has ``port``."""
    services = [s for s in find(docs, "Service", name) if s["metadata"].get("namespace") == namespace]
    assert len(services) == 1, f"no Service {name} in namespace {namespace}"
    assert port in [p["port"] for p in services[0]["spec"]["ports"]], f"Service {name} has no port {port}"
    return services[0]


def assert_reaches_the_gateway(example: list[Doc], name: str, namespace: str, port: int) -> None:
    service = service_port(example, name, namespace, port)
    deployment = gateway_deployment(example)
    assert selects({"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"])
    (service_port_spec,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    container_ports = {p["name"]: p["containerPort"] for p in only_container(deployment)["ports"]}
    assert service_port_spec["targetPort"] in container_ports, "the Service port must lead to the gateway's port"


def assert_check_headers_match_the_replayed_envoy_file(sent: list[str]) -> None:
    authz = envoy_file_ext_authz()
    assert "cookie" in lower(sent) and "authorization" in lower(sent), "the session must reach the gateway"
    assert not [h for h in lower(sent) if h.startswith(FORWARDED_DESCRIPTIONS)], \
        "a client's copy of a header describing the original request would be believed"
    assert sorted(lower(sent)) == sorted(lower(exact_names(authz["allowed_headers"]["patterns"]))), \
        "send the gateway what deploy/envoy/envoy.yaml sends (its requests are replayed in test_proxy_replays.py)"


def test_envoy_gateway_security_policy_guards_the_app_route_with_the_gateway(example: list[Doc],
                                                                            example_settings: Settings) -> None:
    docs = objects(ENVOY_GATEWAY)
    policy = one(docs, "SecurityPolicy")
    namespace = policy["metadata"]["namespace"]
    route = one(docs, "HTTPRoute", "app")
    assert route["metadata"]["namespace"] == namespace
    assert policy["spec"]["targetRefs"] == [{"group": GATEWAY_API_GROUP, "kind": "HTTPRoute", "name": "app"}]
    assert "targetRef" not in policy["spec"] and "targetSelectors" not in policy["spec"]

    ext_auth = policy["spec"]["extAuth"]
    assert ext_auth["failOpen"] is False, "say it: a gateway that cannot be asked must deny"
    assert set(ext_auth) - {"failOpen", "headersToExtAuth", "http"} == set(), "grpc, bodyToExtAuth... are not wanted"
    http = ext_auth["http"]
    (backend,) = http["backendRefs"]
    assert backend.get("kind", "Service") == "Service" and backend.get("group", "") == ""
    assert backend.get("namespace", namespace) == namespace, "another namespace would need a ReferenceGrant"
    assert_reaches_the_gateway(example, backend["name"], namespace, backend["port"])
    idle = seconds(http["backendSettings"]["timeout"]["http"]["connectionIdleTimeout"])
    assert idle < example_settings.keepalive_timeout, "Envoy must drop idle connections before the gateway does"

    # Envoy appends the original path to `path`: the gateway's Envoy mode, /auth/check/{anything}.
    assert "pathOverride" not in http
    assert http["path"] == envoy_file_ext_authz()["http_service"]["path_prefix"] == "/auth/check"
    assert http["headersToBackend"] == list(IDENTITY_HEADERS)
    assert_check_headers_match_the_replayed_envoy_file(ext_auth["headersToExtAuth"])


def test_envoy_gateway_strips_client_identity_headers_before_the_check() -> None:
    docs = objects(ENVOY_GATEWAY)
    policy = one(docs, "ClientTrafficPolicy")
    gateway = one(docs, "Gateway")
    assert policy["spec"]["targetRefs"] == [{"group": GATEWAY_API_GROUP, "kind": "Gateway",
                                             "name": gateway["metadata"]["name"]}]
    headers = policy["spec"]["headers"]
    assert headers["earlyRequestHeaders"]["remove"] == list(IDENTITY_HEADERS)
    assert not headers["earlyRequestHeaders"].get("add") and not headers["earlyRequestHeaders"].get("set")
    assert headers["withUnderscoresAction"] in {"RejectRequest", "DropHeader"}, \
        "X_Auth_Request_User reads as X-Auth-Request-User to CGI-style apps"
    # The gateway and the app judge one path: normalised once, by Envoy.
    assert policy["spec"]["path"]["escapedSlashesAction"] in {"UnescapeAndRedirect", "RejectRequest"}
    assert not policy["spec"]["path"].get("disableMergeSlashes")
    assert "clientIPDetection" not in policy["spec"], "trusting client X-Forwarded-For needs its own review"


@functools.cache
def istio_provider() -> Doc:
    (values,) = load_docs(ISTIOD_VALUES)
    (provider,) = values["meshConfig"]["extensionProviders"]
    return provider  # type: ignore[no-any-return]


def test_istio_extension_provider_asks_the_gateway(example: list[Doc]) -> None:
    provider = istio_provider()
    config = provider["envoyExtAuthzHttp"]
    host = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", config["service"])
    assert host, "name the Service by its full name: NAME.NAMESPACE.svc.cluster.local"
    assert_reaches_the_gateway(example, host.group(1), host.group(2), config["port"])
    assert config["failOpen"] is False, "say it: a gateway that cannot be asked must deny"
    assert config["pathPrefix"] == envoy_file_ext_authz()["http_service"]["path_prefix"] == "/auth/check"
    assert lower(config["headersToUpstreamOnAllow"]) == lower(list(IDENTITY_HEADERS))
    assert_check_headers_match_the_replayed_envoy_file(config["includeRequestHeadersInCheck"])
    response = envoy_file_ext_authz()["http_service"]["authorization_response"]
    client_headers = exact_names(response["allowed_client_headers"]["patterns"])
    assert lower(config["headersToDownstreamOnDeny"]) == lower(client_headers)
    assert {"location", "set-cookie"} <= set(lower(config["headersToDownstreamOnDeny"])), \
        "the sign-in redirect and its cookie must reach the browser"
    assert not config.get("includeAdditionalHeadersInCheck")
    success = response["allowed_client_headers_on_success"]["patterns"]
    assert lower(config["headersToDownstreamOnAllow"]) == lower(exact_names(success)) == ["set-cookie"], \
        "a renewed session's cookie (and nothing else of the check's answer) must reach the browser on a 200"


def test_istio_drops_idle_connections_to_the_gateway_before_the_gateway_does(example_settings: Settings) -> None:
    rule = one(objects(ISTIO), "DestinationRule")
    assert rule["spec"]["host"] == istio_provider()["envoyExtAuthzHttp"]["service"]
    assert not rule["spec"].get("exportTo") and not rule["spec"].get("workloadSelector")
    idle = seconds(rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"])
    assert idle < example_settings.keepalive_timeout


def test_istio_checks_every_request_through_the_gateway_but_sign_in(example_settings: Settings) -> None:
    docs = objects(ISTIO)
    policy = one(docs, "AuthorizationPolicy")
    gateway = one(docs, "Gateway")
    assert policy["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    assert policy["spec"]["targetRefs"] == [{"group": GATEWAY_API_GROUP, "kind": "Gateway",
                                             "name": gateway["metadata"]["name"]}]
    assert "selector" not in policy["spec"] and "targetRef" not in policy["spec"]
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == istio_provider()["name"]
    # One rule, skipping only the sign-in site: any other Host (a port, an unlisted name) is checked.
    (rule,) = policy["spec"]["rules"]
    assert set(rule) == {"to"}
    (to,) = rule["to"]
    operation = to["operation"]
    assert set(operation) == {"notHosts"}, "a positive list of hosts would wave unexpected hosts through"
    sign_in = example_settings.public_url.split("://", 1)[1].rstrip("/")
    assert sorted(operation["notHosts"]) == sorted([sign_in, sign_in + ":*"])


# --- routes, listeners, network ------------------------------------------------------------------------------


def _path_matches(match: Doc, path: str) -> bool:
    """Gateway API path matching: Exact, or PathPrefix element by element (``/login`` is not ``/loginx``)."""
    spec = match.get("path", {"type": "PathPrefix", "value": "/"})
    value = spec["value"]
    if spec["type"] == "Exact":
        return path == value
    assert spec["type"] == "PathPrefix", f"the test does not model {spec['type']}"
    prefix = value.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


def routed_backend(route: Doc, path: str) -> tuple[str, int] | None:
    for rule in route["spec"]["rules"]:
        if any(_path_matches(m, path) for m in rule.get("matches", [{}])):
            (backend,) = rule["backendRefs"]
            return backend["name"], backend["port"]
    return None


def _removes_identity(rule: Doc) -> bool:
    removed = [f["requestHeaderModifier"].get("remove", []) for f in rule.get("filters", [])
               if f["type"] == "RequestHeaderModifier"]
    return any(lower(names) == lower(list(IDENTITY_HEADERS)) for names in removed)


def test_sign_in_pages_are_routed_to_the_gateway_and_nothing_else(example: list[Doc],
                                                                  example_settings: Settings) -> None:
    docs = objects(ENVOY_GATEWAY)
    routes = [r for r in find(docs, "HTTPRoute") if any(b["name"] == "gateway" for rule in r["spec"]["rules"]
                                                        for b in rule["backendRefs"])]
    assert len(routes) == 1
    route = routes[0]
    namespace = route["metadata"]["namespace"]
    assert route["spec"]["hostnames"] == [example_settings.public_url.split("://", 1)[1].rstrip("/")]
    port = example_settings.listen_host_port[1]
    upstreams = [f"/callback/{name}" for name in example_settings.upstreams]
    for path in ("/", "/login", "/login/dev/x", "/callback", *upstreams, "/logout", "/auth/userinfo"):
        assert routed_backend(route, path) == ("gateway", port), f"{path} must reach the gateway's page"
    for path in ("/auth/check", "/auth/check/x", "/auth/webhook", "/metrics", "/healthz", "/readyz", "/loginx"):
        assert routed_backend(route, path) is None, f"{path} must stay inside the cluster"
    assert all(_removes_identity(rule) for rule in route["spec"]["rules"])
    assert_reaches_the_gateway(example, "gateway", namespace, port)
    # No check on the sign-in pages: the SecurityPolicy guards the app's route only.
    assert all(ref["name"] != route["metadata"]["name"] for ref in one(docs, "SecurityPolicy")["spec"]["targetRefs"])


def test_app_route_reaches_the_app_and_its_site_is_a_sign_in_return_target(example: list[Doc],
                                                                          example_settings: Settings) -> None:
    route = one(objects(ENVOY_GATEWAY), "HTTPRoute", "app")
    (rule,) = route["spec"]["rules"]
    assert not rule.get("filters"), "a route's header changes run after ext_authz and would undo its headers"
    (backend,) = rule["backendRefs"]
    service_port(example, backend["name"], route["metadata"]["namespace"], backend["port"])
    for host in route["spec"]["hostnames"]:
        assert any(host == h or (h.startswith(".") and host.endswith(h)) for h in example_settings.redirect_hosts)
        domain = example_settings.cookie.domain
        assert domain and host.endswith(domain if domain.startswith(".") else "." + domain), \
            "the session cookie set on the sign-in site must reach the app's site"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=[d.name for d in KUSTOMIZATIONS])
def test_every_route_attaches_to_a_listener_of_its_host(directory: Path) -> None:
    docs = objects(directory)
    gateway = one(docs, "Gateway")
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    for route in find(docs, "HTTPRoute"):
        (parent,) = route["spec"]["parentRefs"]
        assert parent["name"] == gateway["metadata"]["name"]
        assert route["metadata"]["namespace"] == gateway["metadata"]["namespace"]
        listener = listeners[parent["sectionName"]]
        assert route["spec"]["hostnames"] == [listener["hostname"]]
        assert listener["protocol"] == "HTTPS" and listener["tls"]["mode"] == "Terminate"
    classes = find(docs, "GatewayClass")
    if classes:
        assert [c["metadata"]["name"] for c in classes] == [gateway["spec"]["gatewayClassName"]]


PROXY_PODS: dict[Path, Callable[[Doc], tuple[str, dict[str, str]]]] = {
    # Envoy Gateway runs the proxies in its own namespace, labelled with the Gateway they serve.
    ENVOY_GATEWAY: lambda gateway: ("envoy-gateway-system", {
        "app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy",
        "app.kubernetes.io/managed-by": "envoy-gateway",
        "gateway.envoyproxy.io/owning-gateway-namespace": gateway["metadata"]["namespace"],
        "gateway.envoyproxy.io/owning-gateway-name": gateway["metadata"]["name"]}),
    # Istio runs them beside the Gateway (manifests/charts/istio-control/istio-discovery/files/kube-gateway.yaml).
    ISTIO: lambda gateway: (gateway["metadata"]["namespace"], {
        "gateway.networking.k8s.io/gateway-name": gateway["metadata"]["name"]}),
}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=[d.name for d in KUSTOMIZATIONS])
def test_network_policy_lets_the_proxies_reach_the_gateway(directory: Path, example: list[Doc],
                                                           example_settings: Settings) -> None:
    docs = objects(directory)
    policy = one(docs, "NetworkPolicy")["spec"]
    deployment = gateway_deployment(example)
    assert selects(policy["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert policy["policyTypes"] == ["Ingress"], "the base's egress rules stay as they are"
    namespace, labels = PROXY_PODS[directory](one(docs, "Gateway"))
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": example_settings.listen_host_port[1]}]
    admitted = False
    for peer in rule["from"]:
        namespaces = peer.get("namespaceSelector")
        in_namespace = (namespaces is None and namespace == one(docs, "NetworkPolicy")["metadata"]["namespace"]) or \
            (namespaces is not None and selects(namespaces, {"kubernetes.io/metadata.name": namespace}))
        admitted |= in_namespace and selects(peer["podSelector"], labels)
    assert admitted, "the proxy pods must be admitted"


def test_manifests_use_the_example_namespace(example: list[Doc]) -> None:
    (namespace,) = [d["metadata"]["name"] for d in find(example, "Namespace")]
    for where, doc in _documents():
        if doc["kind"] != "GatewayClass":  # cluster-scoped
            assert doc["metadata"].get("namespace") == namespace, where


def test_no_client_copy_of_an_identity_header_is_passed_through() -> None:
    """Nothing copies or appends an X-Auth-Request-* header from the client: the only writers are ext_authz's
    set (headersToBackend / headersToUpstreamOnAllow) and removals."""
    for where, doc in _documents():
        text = json.dumps(doc).lower()
        assert "allowed_upstream_headers_to_append" not in text and "headerstoappend" not in text, where
        for modifier in re.findall(r'"(?:add|set)": \[[^\]]*\]', text):
            assert "x-auth-request" not in modifier, where


# --- the check these settings make Envoy send, answered by a real gateway -----------------------------------

APP = "https://app.example.com"
SIGN_IN = "https://auth.example.com"
HTML = "text/html,application/xhtml+xml"
FORGED_IDENTITY = [("X-Auth-Request-User", "admin"), ("x-auth-request-user", "root"),
                   ("X-Auth-Request-Groups", "admin"), ("X-Auth-Request-Email", "ceo@example.com")]


def ext_authz_settings(directory: Path) -> tuple[str, list[str], list[str]]:
    """(path prefix, client headers sent to the check, identity headers set on the app's request) as written."""
    if directory == ENVOY_GATEWAY:
        ext_auth = one(objects(ENVOY_GATEWAY), "SecurityPolicy")["spec"]["extAuth"]
        return ext_auth["http"]["path"], ext_auth["headersToExtAuth"], ext_auth["http"]["headersToBackend"]
    config = istio_provider()["envoyExtAuthzHttp"]
    return config["pathPrefix"], config["includeRequestHeadersInCheck"], config["headersToUpstreamOnAllow"]


def check_request(directory: Path, method: str, url: str, client: list[tuple[str, str]]) -> tuple[str, str, Doc]:
    """The check Envoy's ext_authz (HTTP service) sends for a client request, per these settings: the original
    method, the prefix plus the original path and query, the original Host, Authorization and the listed headers
    (names matched ignoring case), and X-Forwarded-For/-Proto as the edge Envoy sets them (the client's
    replaced)."""
    prefix, listed, _ = ext_authz_settings(directory)
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    headers: dict[str, str] = {"Host": host}
    for name, value in client:
        if name.lower() in [*lower(listed), "authorization"] and name.lower() not in {"x-forwarded-for",
                                                                                     "x-forwarded-proto"}:
            headers[name] = value
    headers.update({"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": scheme})
    return method, prefix + "/" + path, headers


def envoy_sets(request: list[tuple[str, str]], answer: Mapping[str, str], names: list[str]) -> list[tuple[str, str]]:
    """The app's request after ext_authz's ``allowed_upstream_headers``: every copy of a listed name the check
    answered with is removed, then the gateway's value added (Envoy's ``setCopy``)."""
    out = list(request)
    for name in names:
        if name in answer:
            out = [(k, v) for k, v in out if k.lower() != name.lower()] + [(name, answer[name])]
    return out


@pytest.fixture
async def checking_gateway(gateway_factory: GatewayFactory) -> Callable[..., Awaitable[Gateway]]:
    async def start(**overrides: Any) -> Gateway:
        return await gateway_factory(public_url=SIGN_IN, **{"login.redirect_hosts": [".example.com"]}, **overrides)
    return start


async def ask(gw: Gateway, request: tuple[str, str, Doc]) -> tuple[int, CIMultiDict[str]]:
    method, target, headers = request
    async with gw.client.request(method, target, headers=headers, allow_redirects=False) as resp:
        await resp.read()
        return resp.status, CIMultiDict(resp.headers)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=[d.name for d in KUSTOMIZATIONS])
async def test_browser_mode_is_the_gateways_setting_not_the_check_url(
        directory: Path, checking_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    """No auth-signin behind ext_authz: with check.redirect_browsers the gateway answers the 302 itself; a
    ?mode=redirect in the user's URL is the user's query and selects nothing."""
    url = APP + "/reports/2026?mode=redirect"
    plain = await checking_gateway()
    status, headers = await ask(plain, check_request(directory, "GET", url, [("Accept", HTML)]))
    assert status == 401 and "Location" not in headers

    redirecting = await checking_gateway(**{"check.redirect_browsers": True})
    status, headers = await ask(redirecting, check_request(directory, "GET", url, [("Accept", HTML)]))
    assert status == 302
    location = urlsplit(headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == SIGN_IN + "/login"
    assert parse_qs(location.query)["rd"] == [url]
    if directory == ISTIO:  # Envoy Gateway passes every header of a denial
        assert {"location", "set-cookie"} <= set(lower(istio_provider()["envoyExtAuthzHttp"]
                                                       ["headersToDownstreamOnDeny"]))
    api = check_request(directory, "GET", url, [("Accept", "application/json")])
    assert (await ask(redirecting, api))[0] == 401


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=[d.name for d in KUSTOMIZATIONS])
async def test_the_app_sees_only_the_gateways_identity(directory: Path,
                                                       checking_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await checking_gateway()
    token = await gw.token("ada@example.com", roles=("staff",))  # no username: X-Auth-Request-User is the email
    client = [("Cookie", f"gw_session={token}"), *FORGED_IDENTITY, ("X-Original-URL", APP + "/public/x"),
              ("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-For", "10.0.0.1")]
    request = check_request(directory, "POST", APP + "/orders", client)
    assert not [k for k in request[2] if k.lower().startswith((*FORWARDED_DESCRIPTIONS, "x-auth-request"))]
    status, answer = await ask(gw, request)
    assert status == 200
    assert set(lower(list(IDENTITY_HEADERS))) <= set(lower(list(answer))), "the gateway sends all four, always"
    _, _, upstream = ext_authz_settings(directory)
    seen = CIMultiDict(envoy_sets(client, answer, upstream))
    for name in IDENTITY_HEADERS:
        assert seen.getall(name) == [answer[name]], f"{name}: a client copy survived"
    assert seen["X-Auth-Request-Email"] == "ada@example.com" and "admin" not in seen["X-Auth-Request-Groups"]
