"""Class 6: ``rd`` on /login and /logout: wherever the gateway sends the browser must be an allowed place.

Every form of shared/docs/security.md (protocol-relative and backslash forms, whitespace and control
characters, dot segments before a slash, look-alike hosts, other schemes, numeric and IPv6 hosts, URLs
nested in the query) and their relatives, sent encoded (as a browser would) and, where the request line
allows, raw. Endpoints: /login with a valid session (straight to rd), the whole development sign-in (rd kept
server-side, used at the callback), and /logout by GET and by same-origin POST (form and JSON).

The oracle reads each ``Location`` (and a JSON ``location``) the way a browser does (WHATWG URL parsing:
tabs and newlines dropped, backslashes as slashes, userinfo skipped, IDNA, numeric IPv4 forms) and requires
a place on the allow-list: the site itself, or a host in the gateway's ``login.redirect_hosts``
(``127.0.0.1:<nginx>``, ``localhost:<nginx>``, ``127.0.0.1:<caddy>``, ``app.example.com``,
``.corp.example.com``), over http(s). Leaving it counts as an allow.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, unquote, urlencode, urljoin, urlsplit

import idna
import pytest

from tests.deploy.stack import COOKIE
from tests.security.corpus import Case, Tally, Verdict, attempt, params
from tests.security.rawhttp import Exchange, request
from tests.security.stacks import APP_HOST, SecurityStack, redirect_hosts

KLASS = "6-redirect"
DEFAULT_PORTS = {"http": 80, "https": 443}


# ---- where a browser goes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Destination:
    """Where a browser would navigate: an origin, or a reason it is not an http(s) origin."""

    scheme: str
    host: str = ""
    port: int = 0
    problem: str = ""


def _ipv4_number(part: str) -> int | None:
    if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
        return int(part[2:] or "0", 16)
    if re.fullmatch(r"0[0-7]+", part):
        return int(part, 8)
    if re.fullmatch(r"[0-9]+", part):
        return int(part)
    return None


def _browser_host(text: str) -> str | None:
    """The host a browser would use (lower case, IDNA, canonical IPv4), or None when it would refuse the URL."""
    host = unquote(text)
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host.strip('[]')).compressed}]"
        except ValueError:
            return None
    try:
        host = idna.encode(host, uts46=True, transitional=False).decode("ascii") if host else ""
    except (idna.IDNAError, UnicodeError):
        host = host.lower()  # browsers are more lenient than idna about e.g. underscores
    host = host.rstrip(".") if host.endswith(".") and host != "." else host
    labels = host.split(".")
    if labels and _ipv4_number(labels[-1]) is not None:
        numbers = [_ipv4_number(label) for label in labels]
        if any(n is None for n in numbers) or len(numbers) > 4:
            return None
        values = [n for n in numbers if n is not None]
        address = 0
        for value in values[:-1]:
            if value > 255:
                return None
            address = address * 256 + value
        address = address * 256 ** (5 - len(values)) + values[-1]
        if address >= 2 ** 32:
            return None
        return str(ipaddress.IPv4Address(address))
    return host or None


def destination(location: str, base: str) -> Destination:
    """Where a browser at ``base`` goes when told ``Location: location`` (WHATWG URL parsing, simplified)."""
    base_parts = urlsplit(base)
    text = location.strip("".join(chr(c) for c in range(0x21)))
    text = re.sub(r"[\t\n\r]", "", text)
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    if match:
        scheme, rest = match.group(1).lower(), text[match.end():]
        if scheme not in DEFAULT_PORTS:
            return Destination(scheme, problem=f"scheme {scheme}:")
        rest = rest.replace("\\", "/")
        if scheme == base_parts.scheme and not rest.startswith("//"):
            return _same_origin(base_parts)
        return _authority(scheme, rest.lstrip("/"))
    rest = text.replace("\\", "/")
    if rest.startswith("//"):
        return _authority(base_parts.scheme, rest[2:])
    return _same_origin(base_parts)


def _same_origin(base: SplitResult) -> Destination:
    return Destination(base.scheme, (base.hostname or "").lower(), base.port or DEFAULT_PORTS[base.scheme])


def _authority(scheme: str, rest: str) -> Destination:
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    port_text = ""
    if authority.startswith("["):
        host_text, _, tail = authority.partition("]")
        host_text += "]"
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host_text, colon, port_text = authority.rpartition(":")
        if not colon:
            host_text, port_text = authority, ""
    if port_text and not port_text.isdigit():
        return Destination(scheme, problem=f"unparseable port in {authority!r}")
    host = _browser_host(host_text)
    if host is None:
        return Destination(scheme, problem=f"a browser would refuse the host {host_text!r}")
    return Destination(scheme, host, int(port_text) if port_text else DEFAULT_PORTS[scheme])


def allowed(dest: Destination, sites: list[str], hosts: list[str]) -> bool:
    """The destination is one of ``sites`` (origins) or matches an allow-list entry."""
    if dest.problem:
        return dest.problem.startswith("a browser would refuse")  # the browser goes nowhere
    for site in sites:
        parts = urlsplit(site)
        if (dest.scheme, dest.host, dest.port) == (parts.scheme, parts.hostname, parts.port):
            return True
    for entry in hosts:
        suffix = entry.startswith(".")
        name, _, port = entry.lstrip(".").partition(":")
        wanted = int(port) if port else DEFAULT_PORTS[dest.scheme]
        if dest.port != wanted:
            continue
        if dest.host == name or (suffix and dest.host.endswith("." + name)):
            return True
    return False


# ---- the targets ----------------------------------------------------------------------------------------

EVIL = "evil.com"
TARGETS: list[tuple[str, str]] = [
    # protocol-relative and backslashes
    ("protocol-relative", f"//{EVIL}"),
    ("protocol-relative-path", f"//{EVIL}/x"),
    ("triple-slash", f"///{EVIL}"),
    ("four-slashes", f"////{EVIL}"),
    ("slash-backslash", f"/\\{EVIL}"),
    ("double-backslash", f"\\\\{EVIL}"),
    ("slash-backslash-slash", f"/\\/{EVIL}"),
    ("backslash-slash", f"\\/{EVIL}"),
    ("encoded-backslash", f"/%5c{EVIL}"),
    ("encoded-double-backslash", f"/%5c%5c{EVIL}"),
    # whitespace and control characters between the slashes
    ("encoded-tab", f"/%09/{EVIL}"),
    ("encoded-lf", f"/%0a/{EVIL}"),
    ("encoded-cr", f"/%0d/{EVIL}"),
    ("raw-tab", f"/\t/{EVIL}"),
    ("raw-lf", f"/\n/{EVIL}"),
    ("encoded-slashes", f"/%2f%2f{EVIL}"),
    ("encoded-slash-second", f"/%2f{EVIL}"),
    ("double-encoded-slashes", f"/%252f%252f{EVIL}"),
    ("encoded-nul", f"/%00/{EVIL}"),
    ("leading-space", f" //{EVIL}"),
    ("leading-nul", f"\x00//{EVIL}"),
    ("space-between", f"/ /{EVIL}"),
    # dot segments before a slash
    ("dot-backslash", f"/./\\{EVIL}"),
    ("dotdot-backslash", f"/../\\{EVIL}"),
    ("dot-slash", f"/.//{EVIL}"),
    ("dotdot-slash", f"/..//{EVIL}"),
    ("encoded-dot-slash", f"/%2e//{EVIL}"),
    # look-alike hosts
    ("suffix-without-boundary", "http://evilcorp.example.com/"),
    ("allowed-host-as-prefix", f"http://{APP_HOST}.{EVIL}/"),
    ("suffix-host-as-prefix", f"http://a.corp.example.com.{EVIL}/"),
    ("userinfo", f"http://{APP_HOST}@{EVIL}/"),
    ("userinfo-empty", f"http://:@{APP_HOST}\\@{EVIL}"),
    ("userinfo-https", f"https://:@{APP_HOST}\\@{EVIL}"),
    ("userinfo-port", f"http://{APP_HOST}:80@{EVIL}/"),
    ("fragment-userinfo", f"http://{EVIL}#@{APP_HOST}/"),
    ("query-userinfo", f"http://{EVIL}?@{APP_HOST}/"),
    ("backslash-userinfo", f"http://{EVIL}\\@{APP_HOST}/"),
    ("encoded-dot-host", f"http://{APP_HOST}%2e{EVIL}/"),
    ("encoded-nul-host", f"http://{APP_HOST}%00.{EVIL}/"),
    ("ideographic-dot", f"http://{APP_HOST}\u3002{EVIL}/"),
    ("fullwidth-dot", f"http://{APP_HOST}\uff0e{EVIL}/"),
    ("cyrillic-a", "http://\u0430pp.example.com/"),
    ("punycode-lookalike", "http://xn--pp-8cd.example.com/"),
    ("mixed-case-evil", "http://EVIL.com/"),
    ("trailing-dot-evil", f"http://{EVIL}./"),
    ("allowed-host-wrong-port", f"http://{APP_HOST}:8080/"),
    ("allowed-host-https-wrong-port", f"https://{APP_HOST}:80/"),
    # other schemes, odd case
    ("javascript", "javascript:alert(1)"),
    ("javascript-mixed-case", "JaVaScRiPt:alert(1)"),
    ("javascript-tab", "java\tscript:alert(1)"),
    ("javascript-encoded", "javascript%3Aalert(1)"),
    ("data", "data:text/html,<script>alert(1)</script>"),
    ("vbscript", "vbscript:msgbox(1)"),
    ("file", "file:///etc/passwd"),
    ("https-upper", f"HTTPS://{EVIL}/"),
    ("http-single-slash", f"http:/{EVIL}"),
    ("http-no-slash", f"http:{EVIL}"),
    ("https-no-slash", f"https:{EVIL}"),
    ("https-three-slashes", f"https:///{EVIL}"),
    ("http-backslashes", f"http:\\\\{EVIL}"),
    ("http-leading-space", f" http://{EVIL}"),
    # numeric and IPv6 hosts
    ("decimal-ip", "http://2130706433/"),
    ("hex-ip", "http://0x7f.1/"),
    ("octal-ip", "http://0177.0.0.1/"),
    ("short-ip", "http://127.1/"),
    ("ipv6-no-slashes", "http:[::1]"),
    ("ipv6", "http://[::1]/"),
    ("ipv4-mapped-ipv6", "http://[::ffff:127.0.0.1]/"),
    ("evil-ip", "http://203.0.113.9/"),
    # URLs nested in the query: fine only because the outer host is allowed
    ("nested-in-query", f"http://a.corp.example.com/?next=https://{EVIL}"),
    ("nested-in-local-query", f"/?next=//{EVIL}"),
    ("nested-fragment", f"/#//{EVIL}"),
    # allowed: the gateway may keep these (or fall back to the default)
    ("ok-local", "/dashboard?tab=1"),
    ("ok-app-host", f"http://{APP_HOST}/x"),
    ("ok-app-host-upper", f"http://{APP_HOST.upper()}/x"),
    ("ok-app-host-trailing-dot", f"http://{APP_HOST}./x"),
    ("ok-suffix", "http://a.corp.example.com/y"),
    ("ok-suffix-apex", "http://corp.example.com/"),
    ("ok-site", "{site}/z"),
]
ACCEPTED = {"ok-local", "ok-app-host", "ok-suffix", "ok-site"}
"""Controls: the gateway must honour these (not fall back to its default), or the corpus proves nothing."""

ENDPOINTS = ("login-session", "login-session-nginx", "login-flow", "logout-get", "logout-post", "logout-post-json")
CORE_ENDPOINTS = ("login-session",)


def encodings(target: str) -> list[tuple[str, str]]:
    """(id, query value): percent-encoded as a browser would, and raw when the request line can carry it."""
    out = [("enc", quote(target, safe=""))]
    if all(0x21 <= ord(c) < 0x7F for c in target) and not any(c in target for c in "#&+%"):
        out.append(("raw", target))
    return out


def cases() -> list[Case]:
    out = []
    for endpoint in ENDPOINTS:
        for target_id, target in TARGETS:
            for enc_id in [e for e, _ in encodings(target.replace("{site}", "http://x"))]:
                core = endpoint in CORE_ENDPOINTS and enc_id == "enc"
                out.append(Case(f"{endpoint}-{target_id}-{enc_id}", core, (endpoint, target_id, target, enc_id)))
    return out


@pytest.mark.parametrize("case", params(cases()))
def test_rd_never_sends_the_browser_off_the_allow_list(stack: SecurityStack, tally: Tally, case: Case) -> None:
    endpoint, target_id, target, enc_id = case.data
    target = target.replace("{site}", stack.nginx.url)
    query = dict(encodings(target))[enc_id]
    via_nginx = endpoint == "login-session-nginx"
    port = stack.nginx.port if via_nginx else stack.gateway.port
    base = stack.nginx.url if via_nginx else stack.gateway.url
    site_host = f"127.0.0.1:{port}"
    secrets = list(stack.tokens.all())
    if endpoint in ("login-session", "login-session-nginx"):
        data = request("GET", f"/login?rd={query}", [("Cookie", f"{COOKIE}={stack.tokens.valid}"),
                                                     ("Accept", "text/html")], host=site_host)
        verdict, sent, _ = attempt(stack, KLASS, case.id, port, data, secrets=secrets)
        locations = _locations(sent)
    elif endpoint == "login-flow":
        verdict, locations = _sign_in_with(stack, tally, case.id, query, secrets)
    else:
        method = "GET" if endpoint == "logout-get" else "POST"
        accept = "application/json" if endpoint == "logout-post-json" else "text/html"
        headers = [("Accept", accept)]
        if method == "POST":
            headers += [("Origin", stack.nginx.url), ("Content-Type", "application/x-www-form-urlencoded")]
        data = request(method, f"/logout?rd={query}", headers, b"" if method == "POST" else None, host=site_host)
        verdict, sent, _ = attempt(stack, KLASS, case.id, port, data, secrets=secrets)
        locations = _locations(sent)
    judge_locations(verdict, locations, base, stack)
    if target_id in ACCEPTED and endpoint != "logout-get" and locations:
        wanted = destination(target, base)
        if not any(destination(loc, base) == wanted and not loc.startswith("/login") for loc in locations):
            verdict.problems.append(f"an allowed target was not honoured: {locations}")
    tally.conclude(verdict)


def _locations(sent: Exchange) -> list[str]:
    out = []
    for response in sent.responses:
        if 300 <= response.status < 400 and response.header("Location") is not None:
            out.append(response.header("Location") or "")
        if (response.header("Content-Type") or "").startswith("application/json"):
            try:
                body = response.json()
            except ValueError:
                continue
            if isinstance(body, dict) and isinstance(body.get("location"), str):
                out.append(body["location"])
    return out


def judge_locations(verdict: Verdict, locations: list[str], base: str, stack: SecurityStack) -> None:
    """An allow for every location a browser would follow off the allow-list."""
    hosts = redirect_hosts(stack.nginx.port, stack.caddy.port if stack.caddy else 0)
    sites = [base, stack.nginx.url]
    for location in locations:
        dest = destination(location, base)
        if not allowed(dest, sites, hosts):
            where = dest.problem or f"{dest.scheme}://{dest.host}:{dest.port}"
            verdict.allows.append(f"Location {location!r} sends the browser to {where}")


def _sign_in_with(stack: SecurityStack, tally: Tally, case_id: str, query: str,
                  secrets: list[str]) -> tuple[Verdict, list[str]]:
    """The whole development sign-in with ``rd``: the target is kept server-side and used at the callback."""
    port, base = stack.gateway.port, stack.gateway.url
    browser = [("Accept", "text/html")]
    verdict, sent, _ = attempt(stack, KLASS, case_id, port, request("GET", f"/login?rd={query}", browser),
                               secrets=secrets)
    start = sent.first
    if start is None or start.status != 302:
        return verdict, _locations(sent)
    jar = start.cookies()
    secrets += list(jar.values())
    tally.secrets.update(jar.values())
    cookie = ("Cookie", "; ".join(f"{k}={v}" for k, v in jar.items()))
    form_target = urlsplit(urljoin(base + "/login", start.header("Location") or ""))
    form_path = form_target.path + ("?" + form_target.query if form_target.query else "")
    form_verdict, sent, _ = attempt(stack, KLASS, case_id, port, request("GET", form_path, [*browser, cookie]),
                                    secrets=secrets)
    _merge(verdict, form_verdict)
    page = sent.first.text if sent.first is not None else ""
    action, state = re.search(r'<form[^>]*action="([^"]+)"', page), re.search(r'name="state" value="([^"]*)"', page)
    if not (action and state):
        verdict.problems.append("the development sign-in form did not come")
        return verdict, []
    params_ = urlencode({"state": html.unescape(state.group(1)), "email": "rd@example.com", "name": "", "groups": ""})
    callback = urlsplit(urljoin(base + form_path, html.unescape(action.group(1)))).path + "?" + params_
    done_verdict, sent, _ = attempt(stack, KLASS, case_id, port, request("GET", callback, [*browser, cookie]),
                                    secrets=secrets)
    session = sent.first.cookies().get(COOKIE, "") if sent.first is not None else ""
    if session:
        tally.secrets.add(session)
        new_token_in_answer(done_verdict, sent, session)
    _merge(verdict, done_verdict)
    verdict.observed = f"callback: {sent.short()}"
    return verdict, _locations(sent)


def new_token_in_answer(verdict: Verdict, sent: Exchange, token: str) -> None:
    """A freshly minted session token must not be in the callback's body or Location."""
    for response in sent.responses:
        headers = json.dumps([(k, v) for k, v in response.headers if k.lower() != "set-cookie"])
        if token in response.text or token in headers:
            verdict.leaks.append("the new session token in the callback's answer")


def _merge(into: Verdict, other: Verdict) -> None:
    into.allows += other.allows
    into.server_errors += other.server_errors
    into.hang = into.hang or other.hang
    into.leaks += other.leaks
    into.problems += other.problems
