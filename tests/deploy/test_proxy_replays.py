"""Replays of the exact check requests Traefik, Envoy and ingress-nginx send (shared/docs/contracts.md).

No Traefik or Envoy binary is available here, so the gateway (in process, real app and SQLite store) is fed
the requests those proxies build, and their answers are applied the way those proxies apply them. The
replays take their settings (check address, path prefix, header lists) from deploy/traefik/*.y*ml and
deploy/envoy/envoy.yaml, which are parsed here, so the shipped examples and the tests cannot drift.

The YAML files are read with a small parser for the block-style subset they use (PyYAML is not a
dependency); when PyYAML happens to be installed the two parsers are compared.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog
from multidict import CIMultiDict

from gateway.handlers.check import IDENTITY_HEADERS
from tests.harness import Gateway, GatewayFactory

ROOT = Path(__file__).resolve().parents[2]
TRAEFIK_FILE = ROOT / "deploy" / "traefik" / "dynamic.yml"
TRAEFIK_CRD = ROOT / "deploy" / "traefik" / "middleware-crd.yaml"
ENVOY_FILE = ROOT / "deploy" / "envoy" / "envoy.yaml"
COOKIE = "gw_session"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SITE = "https://app.example.com"
CLIENT_IP = "203.0.113.7"
SPOOFED = [("X-Auth-Request-User", "mallory"), ("X-Auth-Request-Email", "mallory@evil.example"),
           ("X-Auth-Request-Groups", "admin"), ("X-Auth-Request-User-Id", "1"), ("X-Auth-Request-Admin", "true")]
URL_SPOOF = [("X-Original-URL", "https://app.example.com/public/x"), ("X-Original-URI", "/public/x"),
             ("X-Original-Method", "GET")]
# Signed-in users need the admin role under /admin, and nobody may DELETE under /api/locked.
RULES = [{"action": "allow", "paths": ["/admin"], "groups": ["admin"]},
         {"action": "deny", "paths": ["/admin"]},
         {"action": "deny", "paths": ["/api/locked"], "methods": ["DELETE"]}]
GATEWAY_SETTINGS = {"public_url": SITE, "access.rules": RULES}
Headers = list[tuple[str, str]]


# --- a parser for the block-style YAML subset the deploy files use -------------------------------------

class YamlSubsetError(ValueError):
    """The file uses YAML the subset parser does not support (flow collections, block scalars, tags...)."""


_KEY_RE = re.compile(r"^([^\s\"'#&*\-?][^#]*?|-[^\s][^#]*?):(?:[ \t]+(.*))?$")
_AMBIGUOUS = {"yes", "no", "on", "off", "y", "n", "Yes", "No", "On", "Off"}


def _strip_comment(text: str) -> str:
    quote, i = "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'" and (i == 0 or text[i - 1] in " :-"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
        i += 1
    if quote:
        raise YamlSubsetError(f"unterminated quote: {text!r}")
    return text.rstrip()


def _quoted_end(text: str) -> int:
    """Index of the quote closing the quoted scalar that starts ``text``."""
    quote, i = text[0], 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1:i + 2] == "'":
                i += 2
                continue
            return i
        i += 1
    raise YamlSubsetError(f"unterminated quote: {text!r}")


def _scalar(text: str, anchors: Mapping[str, Any]) -> Any:
    if text.startswith("*"):
        if text[1:] not in anchors:
            raise YamlSubsetError(f"unknown alias {text!r}")
        return anchors[text[1:]]
    if text[0] == '"':
        if _quoted_end(text) != len(text) - 1:
            raise YamlSubsetError(f"text after a quoted scalar: {text!r}")
        return json.loads(text)
    if text[0] == "'":
        if _quoted_end(text) != len(text) - 1:
            raise YamlSubsetError(f"text after a quoted scalar: {text!r}")
        return text[1:-1].replace("''", "'")
    if text[0] in "[{|>!%@`&" or text in _AMBIGUOUS:
        raise YamlSubsetError(f"unsupported YAML: {text!r}")
    if text in {"true", "True"}:
        return True
    if text in {"false", "False"}:
        return False
    if text in {"null", "~"}:
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    return text


def _split_key(text: str, anchors: Mapping[str, Any]) -> tuple[Any, str] | None:
    """``key: rest`` -> (key, rest); None when ``text`` is not a mapping entry."""
    if text[0] in "\"'":
        end = _quoted_end(text)
        after = text[end + 1:]
        if after == ":" or after.startswith((": ", ":\t")):
            return _scalar(text[:end + 1], anchors), after[1:].strip()
        return None
    match = _KEY_RE.match(text)
    if match is None:
        return None
    return match.group(1).strip(), (match.group(2) or "").strip()


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


class _Parser:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.i = 0
        self.anchors: dict[str, Any] = {}

    def fail(self, message: str) -> YamlSubsetError:
        where = self.lines[self.i][1] if self.i < len(self.lines) else "end of document"
        return YamlSubsetError(f"{message} at {where!r}")

    def document(self) -> Any:
        node = self.block(self.lines[0][0])
        if self.i != len(self.lines):
            raise self.fail("unexpected line")
        return node

    def block(self, indent: int) -> Any:
        return self.sequence(indent) if _is_item(self.lines[self.i][1]) else self.mapping(indent)

    def mapping(self, indent: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        while self.i < len(self.lines):
            level, text = self.lines[self.i]
            if level < indent or (level == indent and _is_item(text)):
                break
            if level > indent:
                raise self.fail("unexpected indentation")
            entry = _split_key(text, self.anchors)
            if entry is None:
                raise self.fail("expected 'key: value'")
            key, rest = entry
            if key in out:
                raise self.fail(f"duplicate key {key!r}")
            self.i += 1
            out[key] = self.value(rest, indent)
        return out

    def value(self, rest: str, indent: int) -> Any:
        anchor = ""
        if rest.startswith("&"):
            anchor, _, rest = rest[1:].partition(" ")
            rest = rest.strip()
        node: Any = None
        if rest:
            node = _scalar(rest, self.anchors)
        elif self.i < len(self.lines):
            level, text = self.lines[self.i]
            if level > indent or (level == indent and _is_item(text)):
                node = self.block(level)
        if anchor:
            self.anchors[anchor] = node
        return node

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while self.i < len(self.lines):
            level, text = self.lines[self.i]
            if level < indent or not _is_item(text):
                break
            if level > indent:
                raise self.fail("unexpected indentation")
            rest = text[1:].strip()
            if not rest:
                self.i += 1
                if self.i >= len(self.lines) or self.lines[self.i][0] <= indent:
                    out.append(None)
                else:
                    out.append(self.block(self.lines[self.i][0]))
            elif rest[0] not in "*&" and _split_key(rest, self.anchors) is not None:
                # "- key: value" opens a mapping whose keys line up with "key"
                column = level + text.index(rest)
                self.lines[self.i] = (column, rest)
                out.append(self.mapping(column))
            else:
                self.i += 1
                out.append(self.value(rest, indent))
        return out


def load_yaml(path: Path) -> list[Any]:
    """Every non-empty document of a YAML file written in the block-style subset."""
    documents: list[list[tuple[int, str]]] = [[]]
    for raw in path.read_text().splitlines():
        if raw.strip() == "---":
            documents.append([])
            continue
        leading = raw[: len(raw) - len(raw.lstrip())]
        if "\t" in leading:
            raise YamlSubsetError(f"tab in indentation: {raw!r}")
        text = _strip_comment(raw)
        if text.strip():
            documents[-1].append((len(text) - len(text.lstrip(" ")), text.strip()))
    return [_Parser(lines).document() for lines in documents if lines]


# --- the deploy files: what the replays rely on ------------------------------------------------------

@dataclass(frozen=True)
class TraefikForwardAuth:
    address: str
    trust_forward_header: bool
    request_headers: tuple[str, ...]
    response_headers: tuple[str, ...]
    response_headers_regex: str
    response_cookies: tuple[str, ...]


def _forward_auth(config: Mapping[str, Any]) -> TraefikForwardAuth:
    return TraefikForwardAuth(config["address"], config["trustForwardHeader"] is True,
                              tuple(config.get("authRequestHeaders") or ()),
                              tuple(config.get("authResponseHeaders") or ()),
                              config.get("authResponseHeadersRegex") or "",
                              tuple(config.get("addAuthCookiesToResponse") or ()))


def traefik_file() -> dict[str, Any]:
    (doc,) = load_yaml(TRAEFIK_FILE)
    http: dict[str, Any] = doc["http"]
    return http


def traefik_middleware() -> TraefikForwardAuth:
    """The forwardAuth middleware the protected router of deploy/traefik/dynamic.yml uses."""
    http = traefik_file()
    protected = [r for r in http["routers"].values()
                 if any("forwardAuth" in http["middlewares"][m] for m in r.get("middlewares", ()))]
    assert len(protected) == 1, "expected exactly one router behind forwardAuth"
    (name,) = [m for m in protected[0]["middlewares"] if "forwardAuth" in http["middlewares"][m]]
    return _forward_auth(http["middlewares"][name]["forwardAuth"])


@dataclass(frozen=True)
class EnvoyExtAuthz:
    path_prefix: str
    cluster: str
    allowed_headers: tuple[Mapping[str, Any], ...]
    upstream_headers: tuple[Mapping[str, Any], ...]
    client_headers: tuple[Mapping[str, Any], ...]
    client_headers_on_success: tuple[Mapping[str, Any], ...]
    failure_mode_allow: bool


def envoy_http_manager() -> dict[str, Any]:
    (doc,) = load_yaml(ENVOY_FILE)
    (listener,) = doc["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    config: dict[str, Any] = manager["typed_config"]
    return config


def envoy_ext_authz() -> EnvoyExtAuthz:
    manager = envoy_http_manager()
    (authz,) = [f["typed_config"] for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    service = authz["http_service"]
    response = service["authorization_response"]
    return EnvoyExtAuthz(service["path_prefix"], service["server_uri"]["cluster"],
                         tuple(authz["allowed_headers"]["patterns"]),
                         tuple(response["allowed_upstream_headers"]["patterns"]),
                         tuple(response["allowed_client_headers"]["patterns"]),
                         tuple(response.get("allowed_client_headers_on_success", {}).get("patterns", ())),
                         authz.get("failure_mode_allow", False))


def envoy_matches(patterns: Iterable[Mapping[str, Any]], name: str) -> bool:
    """Envoy's ListStringMatcher for a (lower-case) header name: exact and prefix, as the file uses."""
    for pattern in patterns:
        unsupported = set(pattern) - {"exact", "prefix", "ignore_case"}
        assert not unsupported, f"the replay does not model {unsupported}"
        value, subject = pattern.get("exact", pattern.get("prefix", "")), name
        if pattern.get("ignore_case"):
            value, subject = value.lower(), subject.lower()
        if ("exact" in pattern and subject == value) or ("prefix" in pattern and subject.startswith(value)):
            return True
    return False


# --- what each proxy sends, and what it does with the answer -----------------------------------------

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade"}
_TRAEFIK_X_HEADERS = ("X-Forwarded-Proto", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Port",
                      "X-Forwarded-Server", "X-Forwarded-Uri", "X-Forwarded-Method",
                      "X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info")


def _canonical(name: str) -> str:
    """Go's http.CanonicalHeaderKey."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@dataclass
class Replay:
    """One check request as a proxy sends it: method, target (path and query) and headers."""

    method: str
    target: str
    headers: Headers


def traefik_request(fa: TraefikForwardAuth, *, method: str, url: str, client: Sequence[tuple[str, str]]) -> Replay:
    """The GET Traefik's forwardAuth sends for a client request (pkg/middlewares/auth/forward.go, writeHeader).

    The client talks to an entry point that does not trust it, so the entry point has already dropped the
    client's X-Forwarded-* and X-Real-Ip and set its own; then forwardAuth copies the headers, keeps only
    authRequestHeaders (plus the X-Forwarded-* ones when trustForwardHeader is set), appends the client's
    address to X-Forwarded-For and fills in the X-Forwarded-* still missing.
    """
    parts = urlsplit(url)
    uri = parts.path + ("?" + parts.query if parts.query else "")
    entry: dict[str, list[str]] = {}
    for name, value in client:
        key = _canonical(name)
        if key in _TRAEFIK_X_HEADERS or key == "X-Real-Ip":
            continue
        entry.setdefault(key, []).append(value)
    entry.update({"X-Forwarded-Proto": [parts.scheme], "X-Forwarded-Host": [parts.netloc],
                  "X-Forwarded-Port": [str(parts.port or (443 if parts.scheme == "https" else 80))],
                  "X-Forwarded-Server": ["traefik-1"], "X-Real-Ip": [CLIENT_IP]})
    forward = {k: list(v) for k, v in entry.items() if k.lower() not in _HOP}
    if not fa.trust_forward_header:
        for key in _TRAEFIK_X_HEADERS:
            forward.pop(key, None)
    allowed = list(fa.request_headers)
    if allowed and fa.trust_forward_header:
        allowed += _TRAEFIK_X_HEADERS
    if allowed:
        forward = {_canonical(n): forward[_canonical(n)] for n in allowed if _canonical(n) in forward}
    prior = forward.get("X-Forwarded-For")
    forward["X-Forwarded-For"] = [", ".join([*(prior or []), CLIENT_IP])]
    for key, value in (("X-Forwarded-Method", method), ("X-Forwarded-Proto", parts.scheme),
                       ("X-Forwarded-Host", parts.netloc), ("X-Forwarded-Uri", uri)):
        forward.setdefault(key, [value])
    forward.setdefault("User-Agent", ["Go-http-client/1.1"])
    address = urlsplit(fa.address)
    headers = [("Host", address.netloc), ("Accept-Encoding", "gzip")]
    headers += [(k, v) for k, values in forward.items() for v in values]
    return Replay("GET", address.path + ("?" + address.query if address.query else ""), headers)


def traefik_upstream_headers(fa: TraefikForwardAuth, client: Sequence[tuple[str, str]],
                             answer: Mapping[str, str]) -> Headers:
    """The request headers the app gets after a 2xx: authResponseHeaders, then authResponseHeadersRegex."""
    request: dict[str, list[str]] = {}
    for name, value in client:
        request.setdefault(_canonical(name), []).append(value)
    response: dict[str, list[str]] = {}
    for name, value in answer.items():
        response.setdefault(_canonical(name), []).append(value)
    for name in fa.response_headers:
        key = _canonical(name)
        request.pop(key, None)
        if key in response:
            request[key] = list(response[key])
    if fa.response_headers_regex:
        regex = re.compile(fa.response_headers_regex)
        request = {k: v for k, v in request.items() if not regex.search(k)}
        request.update({k: list(v) for k, v in response.items() if regex.search(k)})
    return [(k, v) for k, values in request.items() for v in values]


def envoy_request(authz: EnvoyExtAuthz, *, method: str, url: str, client: Sequence[tuple[str, str]]) -> Replay:
    """The check ext_authz (HTTP service) sends: original method, path_prefix + original path and query,
    only the allowed headers plus Host, Method, Path, Content-Length (0) and Authorization.

    The connection manager runs first with use_remote_address: it appends the client's address to
    X-Forwarded-For, sets X-Forwarded-Proto and adds an X-Request-Id when there is none.
    """
    parts = urlsplit(url)
    seen: Headers = []
    for name, value in client:
        lower = name.lower()
        if lower in {"x-forwarded-proto", "host"} or lower.startswith("x-envoy-"):
            continue
        if lower == "x-forwarded-for":
            value = f"{value}, {CLIENT_IP}"
        seen.append((lower, value))
    if not any(k == "x-forwarded-for" for k, _ in seen):
        seen.append(("x-forwarded-for", CLIENT_IP))
    seen.append(("x-forwarded-proto", parts.scheme))
    if not any(k == "x-request-id" for k, _ in seen):
        seen.append(("x-request-id", str(uuid.uuid4())))
    headers: Headers = [("host", parts.netloc), ("content-length", "0")]
    headers += [(k, v) for k, v in seen if k not in {"content-length", "host"}
                and (k == "authorization" or envoy_matches(authz.allowed_headers, k))]
    path = parts.path + ("?" + parts.query if parts.query else "")
    return Replay(method, authz.path_prefix + path, headers)


def ingress_nginx_request(*, method: str, url: str, client: Sequence[tuple[str, str]], request_id: str,
                          auth_url: str = "http://gateway.auth.svc.cluster.local:4180/auth/check") -> Replay:
    """The auth subrequest ingress-nginx sends for ``nginx.ingress.kubernetes.io/auth-url``: a GET with the
    client's headers, X-Original-URL/-Method, X-Auth-Request-Redirect, X-Forwarded-For, X-Real-IP,
    X-Request-ID, X-Sent-From, the auth service's own Host and an empty X-Forwarded-Proto."""
    parts = urlsplit(url)
    target = urlsplit(auth_url)
    overridden = {"host", "x-original-url", "x-original-method", "x-auth-request-redirect", "x-forwarded-for",
                  "x-real-ip", "x-request-id", "x-sent-from", "x-forwarded-proto", "content-length"}
    headers: Headers = [(k, v) for k, v in client if k.lower() not in overridden]
    headers += [("Host", target.netloc), ("X-Original-URL", url), ("X-Original-Method", method),
                ("X-Auth-Request-Redirect", parts.path + ("?" + parts.query if parts.query else "")),
                ("X-Sent-From", "nginx-ingress-controller"), ("X-Real-IP", CLIENT_IP),
                ("X-Forwarded-For", CLIENT_IP), ("X-Request-ID", request_id), ("X-Forwarded-Proto", "")]
    return Replay("GET", target.path + ("?" + target.query if target.query else ""), headers)


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def identity(self) -> dict[str, str]:
        return {name: self.headers.get(name, "<missing>") for name in IDENTITY_HEADERS}

    def rd(self) -> str:
        location = urlsplit(self.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == SITE + "/login"
        (rd,) = parse_qs(location.query)["rd"]
        return rd


async def send(gw: Gateway, replay: Replay) -> Answer:
    async with gw.client.request(replay.method, replay.target, headers=CIMultiDict(replay.headers),
                                 allow_redirects=False) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.read())


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory(**GATEWAY_SETTINGS)


# --- the files themselves -----------------------------------------------------------------------------

def test_yaml_subset_parser_agrees_with_pyyaml_when_installed() -> None:
    files = (TRAEFIK_FILE, TRAEFIK_CRD, ENVOY_FILE)
    parsed = {path: load_yaml(path) for path in files}
    assert all(parsed.values())
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return
    for path in files:
        with path.open() as fh:
            assert parsed[path] == [d for d in yaml.safe_load_all(fh) if d is not None], path


def test_yaml_subset_parser_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    for text in ("a: [1, 2]\n", "a: {b: 1}\n", "a: |\n  text\n", "a: yes\n", "a:\n\tb: 1\n", "a: 1\na: 2\n",
                 "a:\n  b: 1\n   c: 2\n"):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(YamlSubsetError):
            load_yaml(path)
    path = tmp_path / "good.yaml"
    path.write_text("# c\n---\nk: &x\n  - \"a # b\"\n  - 'it''s'\nl: *x\nm:\n- n: 1\n  o: true\n  p: 0.5\n")
    assert load_yaml(path) == [{"k": ["a # b", "it's"], "l": ["a # b", "it's"], "m": [{"n": 1, "o": True, "p": 0.5}]}]


def test_traefik_files_hold_what_the_replays_rely_on() -> None:
    fa = traefik_middleware()
    address = urlsplit(fa.address)
    assert (address.scheme, address.path, address.query) == ("http", "/auth/check", "mode=redirect")
    assert fa.trust_forward_header
    assert sorted(fa.response_headers) == sorted(IDENTITY_HEADERS)
    regex = re.compile(fa.response_headers_regex)
    assert all(regex.search(h) for h in (*IDENTITY_HEADERS, "X-Auth-Request-Admin"))
    assert not any(regex.search(h) for h in ("Cookie", "Authorization", "X-Forwarded-User"))
    lowered = {h.lower() for h in fa.request_headers}
    assert {"cookie", "authorization", "accept", "x-requested-with"} <= lowered
    assert not any(h.startswith(("x-original", "x-auth-request", "x-forwarded")) for h in lowered)
    # A renewed session's cookie (session.refresh) goes back to the browser on a 2xx, and no other cookie.
    assert fa.response_cookies == (COOKIE,)

    http = traefik_file()
    services = {name: urlsplit(s["loadBalancer"]["servers"][0]["url"]).netloc for name, s in http["services"].items()}
    gateway_router = http["routers"]["gateway"]
    assert services[gateway_router["service"]] == address.netloc
    for path in ("Path(`/login`)", "PathPrefix(`/login/`)", "PathPrefix(`/callback/`)", "Path(`/logout`)",
                 "Path(`/auth/userinfo`)"):
        assert path in gateway_router["rule"]
    for router in http["routers"].values():  # every router into the app strips or replaces identity headers
        if router["service"] != gateway_router["service"]:
            used = [http["middlewares"][m] for m in router.get("middlewares", ())]
            assert any("forwardAuth" in m or
                       {k: v for k, v in m.get("headers", {}).get("customRequestHeaders", {}).items()
                        if k in IDENTITY_HEADERS} == dict.fromkeys(IDENTITY_HEADERS, "") for m in used), router

    # The Kubernetes CRD says the same, but for the in-cluster address.
    crd = {(d["kind"], d["metadata"]["name"]): d for d in load_yaml(TRAEFIK_CRD)}
    assert all(d["apiVersion"] == "traefik.io/v1alpha1" for d in crd.values())
    crd_fa = _forward_auth(crd[("Middleware", "gateway-auth")]["spec"]["forwardAuth"])
    crd_address = urlsplit(crd_fa.address)
    assert (crd_address.path, crd_address.query) == (address.path, address.query)
    assert crd_fa == TraefikForwardAuth(crd_fa.address, fa.trust_forward_header, fa.request_headers,
                                        fa.response_headers, fa.response_headers_regex, fa.response_cookies)
    routes = crd[("IngressRoute", "app")]["spec"]["routes"]
    assert routes[-1]["middlewares"] == [{"name": "gateway-auth"}]
    assert routes[0]["services"][0]["port"] == crd_address.port == 4180


def test_envoy_file_holds_what_the_replays_rely_on() -> None:
    authz = envoy_ext_authz()
    assert authz.path_prefix == "/auth/check"
    assert authz.failure_mode_allow is False
    for name in ("cookie", "authorization", "accept", "x-requested-with"):
        assert envoy_matches(authz.allowed_headers, name), name
    for name in ("x-original-url", "x-original-uri", "x-original-method", "x-forwarded-uri", "x-forwarded-host",
                 "x-auth-request-user"):
        assert not envoy_matches(authz.allowed_headers, name), name
    assert sorted(p["exact"] for p in authz.upstream_headers) == sorted(h.lower() for h in IDENTITY_HEADERS)
    assert envoy_matches(authz.client_headers, "location") and envoy_matches(authz.client_headers, "set-cookie")
    # On a 200 only a renewed session's Set-Cookie goes to the client (with the app's answer).
    assert [p["exact"] for p in authz.client_headers_on_success] == ["set-cookie"]

    (doc,) = load_yaml(ENVOY_FILE)
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    assert authz.cluster in clusters
    manager = envoy_http_manager()
    assert manager["use_remote_address"] is True
    assert [f["name"] for f in manager["http_filters"]][-1] == "envoy.filters.http.router"
    (vhost,) = manager["route_config"]["virtual_hosts"]
    unchecked = {}
    for route in vhost["routes"]:
        per_filter = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz", {})
        match = route["match"]
        if per_filter.get("disabled"):
            unchecked[next(iter(match.values()))] = route["route"]["cluster"]
            removed = {h.lower() for h in route.get("request_headers_to_remove", ())}
            assert removed >= {h.lower() for h in IDENTITY_HEADERS}, route
        else:
            assert route["route"]["cluster"] != authz.cluster and "request_headers_to_remove" not in route
    for path in ("/login", "/callback", "/logout", "/auth/userinfo"):
        assert unchecked[path] == authz.cluster
    assert vhost["routes"][-1]["match"] == {"prefix": "/"}


# --- Traefik forwardAuth ------------------------------------------------------------------------------

async def test_traefik_browser_without_session_gets_302_with_the_reconstructed_url(gateway: Gateway) -> None:
    fa = traefik_middleware()
    url = SITE + "/reports/2026?year=2026&q=a%20b"
    answer = await send(gateway, traefik_request(fa, method="GET", url=url, client=[("Accept", HTML), *URL_SPOOF]))
    assert answer.status == 302
    assert answer.rd() == url  # not the client's X-Original-URL: authRequestHeaders kept it away
    assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("client", [
    [("Accept", "application/json")],
    [("Accept", HTML), ("X-Requested-With", "XMLHttpRequest")],
    [("Accept", "application/json"), ("Authorization", "Bearer gwt_" + "A" * 43)],
], ids=["json", "xhr", "unknown-bearer"])
async def test_traefik_api_callers_get_401(gateway: Gateway, client: Headers) -> None:
    fa = traefik_middleware()
    answer = await send(gateway, traefik_request(fa, method="POST", url=SITE + "/api/items", client=client))
    assert answer.status == 401
    assert answer.body == b""


async def test_traefik_signed_in_gets_200_and_the_app_gets_only_the_gateways_identity(gateway: Gateway) -> None:
    fa = traefik_middleware()
    token = await gateway.token("ada@example.com", roles=("user", "editor"), username="ada")
    user_id = str(gateway.users["ada@example.com"].id)
    expected = {"X-Auth-Request-User": "ada", "X-Auth-Request-Email": "ada@example.com",
                "X-Auth-Request-Groups": "user,editor", "X-Auth-Request-User-Id": user_id}
    for credential in (("Cookie", f"theme=dark; {COOKIE}={token}"), ("Authorization", f"Bearer {token}")):
        client = [("Accept", HTML), credential, *SPOOFED, ("X-Other", "kept")]
        answer = await send(gateway, traefik_request(fa, method="PUT", url=SITE + "/docs/1?v=2", client=client))
        assert answer.status == 200
        assert answer.identity() == expected
        upstream = traefik_upstream_headers(fa, client, answer.headers)
        assert sorted((k, v) for k, v in upstream if k.startswith("X-Auth-Request-")) == sorted(expected.items())
        assert ("X-Other", "kept") in upstream


async def test_traefik_the_original_method_and_path_are_judged(gateway: Gateway) -> None:
    fa = traefik_middleware()
    user = await gateway.token("bob@example.com", roles=("user",))
    admin = await gateway.token("root@example.com", roles=("admin",))
    cookie = ("Cookie", f"{COOKIE}={user}")

    async def status(method: str, path: str, *client: tuple[str, str]) -> int:
        return (await send(gateway, traefik_request(fa, method=method, url=SITE + path, client=client))).status

    assert await status("GET", "/admin/users", cookie, *URL_SPOOF) == 403
    assert await status("GET", "/admin/users", ("Cookie", f"{COOKIE}={admin}")) == 200
    assert await status("DELETE", "/api/locked/1", cookie, *URL_SPOOF) == 403
    assert await status("GET", "/api/locked/1", cookie) == 200


# --- Envoy ext_authz ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_envoy_any_method_200_with_session_401_without(gateway: Gateway, method: str) -> None:
    authz = envoy_ext_authz()
    token = await gateway.token("ada@example.com", roles=("user",))
    url = SITE + "/api/items?x=1"
    replay = envoy_request(authz, method=method, url=url, client=[("Cookie", f"{COOKIE}={token}"),
                                                                  ("Accept", "application/json")])
    assert (replay.method, replay.target) == (method, "/auth/check/api/items?x=1")
    answer = await send(gateway, replay)
    assert answer.status == 200
    assert answer.identity()["X-Auth-Request-Email"] == "ada@example.com"
    upstream = {k: v for k, v in answer.headers.items() if envoy_matches(authz.upstream_headers, k.lower())}
    assert {k.lower() for k in upstream} == {h.lower() for h in IDENTITY_HEADERS}

    bearer = envoy_request(authz, method=method, url=url, client=[("Authorization", f"Bearer {token}")])
    assert (await send(gateway, bearer)).status == 200
    anonymous = envoy_request(authz, method=method, url=url, client=[("Accept", HTML), *SPOOFED, *URL_SPOOF])
    answer = await send(gateway, anonymous)
    assert answer.status == 401
    assert answer.body == b""


async def test_envoy_only_allowed_headers_reach_the_gateway_so_the_real_path_is_judged(gateway: Gateway) -> None:
    authz = envoy_ext_authz()
    token = await gateway.token("bob@example.com", roles=("user",))
    client = [("Cookie", f"{COOKIE}={token}"), *URL_SPOOF, *SPOOFED, ("X-Forwarded-Uri", "/public/x"),
              ("X-Forwarded-Host", "evil.example.net")]
    replay = envoy_request(authz, method="GET", url=SITE + "/admin/users", client=client)
    sent = {k.lower() for k, _ in replay.headers}
    assert "cookie" in sent and not any(k.startswith(("x-original", "x-auth-request")) for k in sent)
    assert (await send(gateway, replay)).status == 403
    replay = envoy_request(authz, method="DELETE", url=SITE + "/api/locked/1", client=client)
    assert (await send(gateway, replay)).status == 403


async def test_envoy_browser_redirect_when_enabled_globally(gateway_factory: GatewayFactory) -> None:
    """ext_authz cannot add ?mode=redirect, so Envoy users turn on check.redirect_browsers."""
    gw = await gateway_factory(**GATEWAY_SETTINGS, **{"check.redirect_browsers": True})
    authz = envoy_ext_authz()
    answer = await send(gw, envoy_request(authz, method="GET", url=SITE + "/reports/2026", client=[("Accept", HTML)]))
    assert answer.status == 302
    assert envoy_matches(authz.client_headers, "location")
    assert answer.rd() == SITE + "/reports/2026"
    api = envoy_request(authz, method="GET", url=SITE + "/reports/2026", client=[("Accept", "application/json")])
    assert (await send(gw, api)).status == 401


async def test_envoy_browser_redirect_keeps_the_query(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**GATEWAY_SETTINGS, **{"check.redirect_browsers": True})
    url = SITE + "/reports/2026?year=2026"
    answer = await send(gw, envoy_request(envoy_ext_authz(), method="GET", url=url, client=[("Accept", HTML)]))
    assert answer.status == 302
    assert answer.rd() == url


async def test_envoy_path_is_decoded_once_like_the_app_does(gateway: Gateway) -> None:
    """The app decodes /admin/..%252fpublic once: /admin/..%2fpublic, a path under /admin. Decoding twice
    gives /admin/../public, normalised to /public, which the rules would let a non-admin reach."""
    token = await gateway.token("bob@example.com", roles=("user",))
    replay = envoy_request(envoy_ext_authz(), method="GET", url=SITE + "/admin/..%252fpublic",
                           client=[("Cookie", f"{COOKIE}={token}")])
    assert (await send(gateway, replay)).status == 403


# --- ingress-nginx ------------------------------------------------------------------------------------

async def test_ingress_nginx_takes_the_original_request_from_x_original_url(gateway: Gateway) -> None:
    user = await gateway.token("bob@example.com", roles=("user",))
    client = [("Accept", HTML)]
    url = SITE + "/docs/guide?x=1"

    # no session: a plain 401 even for a browser (auth-signin does the redirect; a 302 would be a 500)
    answer = await send(gateway, ingress_nginx_request(method="GET", url=url, client=client, request_id="a" * 32))
    assert answer.status == 401
    # signed in: 200 with the identity; refused under /admin (host and path from X-Original-URL, not Host)
    cookie = ("Cookie", f"{COOKIE}={user}")
    answer = await send(gateway, ingress_nginx_request(method="GET", url=url, client=[*client, cookie],
                                                       request_id="b" * 32))
    assert answer.status == 200
    assert answer.identity()["X-Auth-Request-Email"] == "bob@example.com"
    admin_url = SITE + "/admin/users"
    answer = await send(gateway, ingress_nginx_request(method="GET", url=admin_url, client=[*client, cookie],
                                                       request_id="c" * 32))
    assert answer.status == 403
    # the original method comes from X-Original-Method
    locked = ingress_nginx_request(method="DELETE", url=SITE + "/api/locked/1", client=[cookie], request_id="d" * 32)
    assert (await send(gateway, locked)).status == 403
    # the URL a sign-in would return to is X-Original-URL (seen through ?mode=redirect on the check URL)
    probe = ingress_nginx_request(method="GET", url=url, client=client, request_id="e" * 32,
                                  auth_url="http://gateway.auth.svc.cluster.local:4180/auth/check?mode=redirect")
    answer = await send(gateway, probe)
    assert answer.status == 302
    assert answer.rd() == url
    # a client-sent X-Forwarded-Uri next to ingress-nginx's X-Original-URL means one of them is forged:
    # refused outright rather than picking one
    spoofed = ingress_nginx_request(method="GET", url=url, client=[*client, cookie, ("X-Forwarded-Uri", "/public/x")],
                                    request_id="f" * 32)
    assert (await send(gateway, spoofed)).status == 401
    # ingress-nginx passes a client's X-Forwarded-Host through: naming another host than X-Original-URL's,
    # it is refused, never believed
    lying = ingress_nginx_request(method="GET", url=url, request_id="9" * 32,
                                  client=[*client, cookie, ("X-Forwarded-Host", "evil.example.net")])
    assert (await send(gateway, lying)).status == 401


async def test_ingress_nginx_request_id_is_on_the_denial_log_line(gateway: Gateway) -> None:
    request_id = uuid.uuid4().hex
    replay = ingress_nginx_request(method="GET", url=SITE + "/private", client=[("Accept", "application/json")],
                                   request_id=request_id)
    with structlog.testing.capture_logs() as logs:
        answer = await send(gateway, replay)
    assert answer.status == 401
    denials = [line for line in logs if line.get("event") == "check denied"]
    assert [line["request_id"] for line in denials] == [request_id]
    assert denials[0]["client"] == "127.0.0.1"
