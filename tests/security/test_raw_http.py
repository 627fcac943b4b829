"""Class 8: raw bytes against both front-ends (the fast lane, and aiohttp alone).

What is sent: a TLS ClientHello and other protocols' greetings, binary garbage, heads with bare CRs and other
line-ending tricks, chunked requests whose trailers carry a valid session followed on the same connection by
a check without one, request smuggling (Content-Length with Transfer-Encoding, two Content-Lengths,
obfuscated Transfer-Encoding, bad chunk sizes) with a valid session only in the smuggled request, and huge
heads. Each must get a 4xx or a closed connection within 2 s (never a hang, never a 5xx), and no answer on
the connection may be a 2xx: the only credential in these bytes is one a correct parser never reads as a
header of a request.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.deploy.stack import COOKIE
from tests.security.corpus import Case, Tally, attempt, params
from tests.security.stacks import SecurityStack, Tokens

KLASS = "8-raw"
Raw = bytes | list[bytes]


@dataclass(frozen=True)
class Attack:
    """Bytes to send (a list is sent in pieces), how many answers to read, and whether a 2xx may come back."""

    build: Callable[[Tokens], Raw]
    expect: int = 1
    lenient: bool = False
    """The bytes are a valid request in a form servers may accept: any status but a 5xx is fine."""


def client_hello() -> bytes:
    """A real TLS ClientHello, as a browser sends to an https:// URL on this port."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="app.example.com")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer, which never comes
        tls.do_handshake()
    return outgoing.read()


def garbage(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def inner(t: Tokens, path: str = "/auth/check") -> bytes:
    """The smuggled request: the only one carrying a valid session."""
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\nCookie: {COOKIE}={t.valid}\r\n\r\n".encode()


def head(*lines: str, version: str = "1.1", target: str = "/auth/check", method: str = "GET") -> bytes:
    return (f"{method} {target} HTTP/{version}\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode()


def chunked_with_trailer(first: str, trailer: str, body: bytes = b'{"headers": {}}') -> bytes:
    method, _, path = first.partition(" ")
    return (f"{method} {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\nTrailer: {trailer.partition(':')[0]}\r\n\r\n").encode() + \
        b"%x\r\n%s\r\n0\r\n%s\r\n\r\n" % (len(body), body, trailer.encode())


def cl_te(t: Tokens, te: str, version: str = "1.1") -> bytes:
    """Content-Length covering everything, and a Transfer-Encoding under which the body ends early."""
    body = b"0\r\n\r\n" + inner(t)
    head = f"POST /auth/check HTTP/{version}\r\nHost: gw\r\nContent-Length: {len(body)}\r\n{te}\r\n\r\n"
    return head.encode() + body


def te_cl(t: Tokens) -> bytes:
    """Chunked framing covering everything, and a Content-Length under which the body ends early."""
    smuggled = inner(t)
    size = b"%x\r\n" % len(smuggled)
    return (b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: %d\r\n\r\n" % len(size)) + size + smuggled + b"\r\n0\r\n\r\n"


def two_lengths(t: Tokens, first: str, second: str) -> bytes:
    smuggled = inner(t)
    return (f"POST /auth/check HTTP/1.1\r\nHost: gw\r\nContent-Length: {first}\r\nContent-Length: {second}\r\n\r\n"
            .format(n=len(smuggled))).encode() + smuggled


def bad_chunk(size_line: bytes) -> bytes:
    return (b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line
            + b"\r\nabcde\r\n0\r\n\r\n")


ATTACKS: dict[str, Attack] = {
    # other protocols and garbage
    "tls-client-hello": Attack(lambda t: client_hello()),
    "tls-first-byte": Attack(lambda t: client_hello()[:1]),
    "tls-record-header": Attack(lambda t: client_hello()[:5]),
    "http2-preface": Attack(lambda t: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    "ssh-banner": Attack(lambda t: b"SSH-2.0-OpenSSH_9.6\r\n"),
    "smtp-ehlo": Attack(lambda t: b"EHLO evil.example\r\n"),
    "proxy-protocol-v1": Attack(lambda t: b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + inner(t)),
    "proxy-protocol-v2": Attack(lambda t: b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(12) + inner(t)),
    "nul-bytes": Attack(lambda t: bytes(64)),
    "blank-lines-then-garbage": Attack(lambda t: b"\r\n\r\n" + garbage(5, 100) + b"\r\n\r\n"),
    "bare-lf-blank-lines-then-garbage": Attack(lambda t: b"\n\n" + garbage(6, 100) + b"\n\n"),
    "high-bytes": Attack(lambda t: b"\xff" * 64),
    **{f"garbage-{size}-{seed}": Attack((lambda s, n: lambda t: garbage(s, n))(seed, size))
       for size in (1, 16, 100, 1000, 70000) for seed in (1, 2, 3)},
    "garbage-then-crlfcrlf": Attack(lambda t: garbage(7, 200) + b"\r\n\r\n"),
    "method-with-nul": Attack(lambda t: b"G\x00T /auth/check HTTP/1.1\r\nHost: gw\r\n\r\n"),
    "method-lower-case": Attack(lambda t: head("Host: gw", f"Cookie: {COOKIE}={t.valid}", method="get"), lenient=True),
    "http-0.9": Attack(lambda t: b"GET /auth/check\r\n"),
    "version-9": Attack(lambda t: head("Host: gw", version="9.9")),
    "version-garbage": Attack(lambda t: b"GET /auth/check HTTP/1.x\r\nHost: gw\r\n\r\n"),
    "space-in-target": Attack(lambda t: b"GET /auth/check x HTTP/1.1\r\nHost: gw\r\n\r\n"),
    "missing-host": Attack(lambda t: head(f"Cookie: {COOKIE}={t.valid}"), lenient=True),
    # line endings
    "bare-cr-everywhere": Attack(lambda t: f"GET /auth/check HTTP/1.1\rHost: gw\rCookie: {COOKIE}={t.valid}\r\r"
                                 .encode()),
    "bare-cr-before-cookie": Attack(lambda t: head("Host: gw", f"X-A: b\rCookie: {COOKIE}={t.valid}")),
    "bare-cr-in-cookie": Attack(lambda t: head("Host: gw", f"Cookie: a=b\r{COOKIE}={t.valid}")),
    "bare-cr-ends-head": Attack(lambda t: f"GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: {COOKIE}={t.valid}\r\r"
                                .encode()),
    "bare-cr-in-request-line": Attack(lambda t: f"GET /auth/check\rX HTTP/1.1\r\nHost: gw\r\n"
                                      f"Cookie: {COOKIE}={t.valid}\r\n\r\n".encode()),
    "cr-cr-lf": Attack(lambda t: f"GET /auth/check HTTP/1.1\r\r\nHost: gw\r\r\nCookie: {COOKIE}={t.valid}\r\r\n\r\r\n"
                       .encode()),
    "bare-lf-lines": Attack(lambda t: f"GET /auth/check HTTP/1.1\nHost: gw\nCookie: {COOKIE}={t.valid}\n\n".encode(),
                            lenient=True),
    "bare-lf-before-cookie": Attack(lambda t: head("Host: gw\nCookie: " + f"{COOKIE}={t.valid}"), lenient=True),
    "obs-fold-cookie": Attack(lambda t: head("Host: gw", "X-A: 1", f" Cookie: {COOKIE}={t.valid}")),
    "obs-fold-tab": Attack(lambda t: head("Host: gw", "X-A: 1", f"\tCookie: {COOKIE}={t.valid}")),
    "space-before-colon": Attack(lambda t: head("Host: gw", f"Cookie : {COOKIE}={t.valid}")),
    "tab-before-colon": Attack(lambda t: head("Host: gw", f"Cookie\t: {COOKIE}={t.valid}")),
    "leading-space-first-header": Attack(lambda t: head(f" Cookie: {COOKIE}={t.valid}", "Host: gw")),
    "nul-in-header-value": Attack(lambda t: head("Host: gw", f"X-A: a\x00Cookie: {COOKIE}={t.valid}")),
    "nul-in-header-name": Attack(lambda t: head("Host: gw", f"Coo\x00kie: {COOKIE}={t.valid}")),
    "vertical-tab-in-name": Attack(lambda t: head("Host: gw", f"Cookie\x0b: {COOKIE}={t.valid}")),
    "colon-in-name": Attack(lambda t: head("Host: gw", f"X:Cookie: {COOKIE}={t.valid}"), lenient=True),
    "non-ascii-name": Attack(lambda t: head("Host: gw", f"Cöokie: {COOKIE}={t.valid}")),
    # smuggling: the valid session is only in the smuggled request
    "cl-te": Attack(lambda t: cl_te(t, "Transfer-Encoding: chunked"), expect=2),
    "te-cl": Attack(lambda t: te_cl(t), expect=2),
    "cl-te-http-1.0": Attack(lambda t: cl_te(t, "Transfer-Encoding: chunked", version="1.0"), expect=2),
    "cl-te-upper-case": Attack(lambda t: cl_te(t, "Transfer-Encoding: CHUNKED"), expect=2),
    "cl-te-leading-space": Attack(lambda t: cl_te(t, "Transfer-Encoding:  chunked"), expect=2),
    "cl-te-tab": Attack(lambda t: cl_te(t, "Transfer-Encoding:\tchunked"), expect=2),
    "cl-te-vertical-tab": Attack(lambda t: cl_te(t, "Transfer-Encoding:\x0bchunked"), expect=2),
    "cl-te-form-feed": Attack(lambda t: cl_te(t, "Transfer-Encoding:\x0cchunked"), expect=2),
    "cl-te-trailing-garbage": Attack(lambda t: cl_te(t, "Transfer-Encoding: chunkedx"), expect=2),
    "cl-te-xchunked": Attack(lambda t: cl_te(t, "Transfer-Encoding: xchunked"), expect=2),
    "cl-te-chunked-identity": Attack(lambda t: cl_te(t, "Transfer-Encoding: chunked, identity"), expect=2),
    "cl-te-identity-chunked": Attack(lambda t: cl_te(t, "Transfer-Encoding: identity, chunked"), expect=2),
    "cl-te-two-headers": Attack(lambda t: cl_te(t, "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked"),
                                expect=2),
    "cl-te-space-before-colon": Attack(lambda t: cl_te(t, "Transfer-Encoding : chunked"), expect=2),
    "cl-te-underscore": Attack(lambda t: cl_te(t, "Transfer_Encoding: chunked"), expect=2),
    "cl-te-quoted": Attack(lambda t: cl_te(t, 'Transfer-Encoding: "chunked"'), expect=2),
    "cl-te-obs-fold": Attack(lambda t: cl_te(t, "Transfer-Encoding:\r\n chunked"), expect=2),
    "two-lengths-zero-first": Attack(lambda t: two_lengths(t, "0", "{n}"), expect=2),
    "two-lengths-zero-last": Attack(lambda t: two_lengths(t, "{n}", "0"), expect=2),
    "length-list": Attack(lambda t: (b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nContent-Length: 0, %d\r\n\r\n"
                                     % len(inner(t))) + inner(t), expect=2),
    "length-plus-sign": Attack(lambda t: b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nContent-Length: +0\r\n\r\n"
                               + inner(t), expect=2),
    "length-negative": Attack(lambda t: b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n"
                              + inner(t), expect=2),
    "length-hex": Attack(lambda t: b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nContent-Length: 0x0\r\n\r\n"
                         + inner(t), expect=2),
    "length-huge": Attack(lambda t: b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999999999999"
                          b"\r\n\r\n" + inner(t), expect=2),
    "get-with-length-body": Attack(lambda t: (b"GET /auth/check HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                                              % len(inner(t))) + inner(t), expect=2),
    "chunk-size-overflow": Attack(lambda t: bad_chunk(b"f" * 40)),
    "chunk-size-negative": Attack(lambda t: bad_chunk(b"-5")),
    "chunk-size-hex-prefix": Attack(lambda t: bad_chunk(b"0x5")),
    "chunk-size-plus": Attack(lambda t: bad_chunk(b"+5")),
    "chunk-size-space": Attack(lambda t: bad_chunk(b" 5")),
    "chunk-size-bare-lf": Attack(lambda t: b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                                 b"\r\n5\nabcde\r\n0\r\n\r\n" + inner(t), expect=2),
    "chunk-extension-bare-cr": Attack(lambda t: bad_chunk(b"5;a=\rb")),
    "chunk-data-too-long": Attack(lambda t: b"POST /auth/check HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                                  b"\r\n1\r\nabcde\r\n0\r\n\r\n" + inner(t), expect=2),
    # huge heads
    "header-20k": Attack(lambda t: head("Host: gw", "X-Big: " + "a" * 20_000)),
    "header-100k": Attack(lambda t: head("Host: gw", "X-Big: " + "a" * 100_000)),
    "header-1m": Attack(lambda t: head("Host: gw", "X-Big: " + "a" * 1_000_000)),
    "head-2m-in-pieces": Attack(lambda t: [b"GET /auth/check HTTP/1.1\r\nHost: gw\r\n",
                                           *[b"X-" + str(i).encode() + b": " + b"a" * 1000 + b"\r\n"
                                             for i in range(2000)], b"\r\n"]),
    "ten-thousand-headers": Attack(lambda t: head("Host: gw", *[f"X-{i}: v" for i in range(10_000)])),
    "thousand-cookie-headers": Attack(lambda t: head("Host: gw", *["Cookie: a=b"] * 1000,
                                                     f"Cookie: {COOKIE}={t.valid}"), lenient=True),
    "target-100k": Attack(lambda t: head("Host: gw", target="/auth/check?" + "a" * 100_000)),
    "name-20k": Attack(lambda t: head("Host: gw", "X" * 20_000 + ": v")),
}

# Chunked requests whose trailer carries a credential, then a credential-less request on the same connection.
FIRSTS = {
    "webhook": "POST /auth/webhook",
    "check-post": "POST /auth/check",
    "envoy-post": "POST /auth/check/api/items",
    "check-get-with-body": "GET /auth/check",
    "healthz-post": "POST /healthz",
    "unknown-post": "POST /nowhere",
}
TRAILERS = {
    "cookie": "Cookie: {cookie}={valid}",
    "cookie-lower": "cookie: {cookie}={valid}",
    "bearer": "Authorization: Bearer {valid}",
    "forwarded-uri": "X-Original-URI: /public",
}
SECONDS = {"check": "/auth/check", "webhook": "/auth/webhook", "userinfo": "/auth/userinfo"}


def carry_over(first: str, trailer: str, second: str) -> Attack:
    def build(t: Tokens) -> bytes:
        line = trailer.format(cookie=COOKIE, valid=t.valid)
        return chunked_with_trailer(first, line) + f"GET {second} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
    return Attack(build, expect=2)


CARRY_OVER = {f"trailer-{fid}-{tid}-then-{sid}": carry_over(first, trailer, second)
              for fid, first in FIRSTS.items() for tid, trailer in TRAILERS.items()
              for sid, second in SECONDS.items()}
CORE_CARRY_OVER = {"trailer-webhook-cookie-then-check", "trailer-check-get-with-body-cookie-then-check",
                   "trailer-envoy-post-bearer-then-webhook", "trailer-healthz-post-cookie-then-check"}


def cases() -> list[Case]:
    out = []
    for front in ("fastlane", "aiohttp"):
        for attack_id, attack in ATTACKS.items():
            core = front == "fastlane" and (not attack_id.startswith("garbage-") or attack_id.endswith("-1"))
            out.append(Case(f"{front}-{attack_id}", core, (front, attack)))
        for attack_id, attack in CARRY_OVER.items():
            out.append(Case(f"{front}-{attack_id}", attack_id in CORE_CARRY_OVER or
                            (front == "aiohttp" and attack_id == "trailer-webhook-cookie-then-check"), (front, attack)))
    return out


@pytest.mark.parametrize("case", params(cases()))
def test_raw_bytes_get_a_refusal_or_a_close_in_time(stack: SecurityStack, tally: Tally, case: Case) -> None:
    front, attack = case.data
    data = attack.build(stack.tokens)
    verdict, sent, _ = attempt(stack, KLASS, case.id, stack.gateways[front].port, data,
                               secrets=stack.tokens.all(), expect=attack.expect)
    if not attack.lenient:
        for response in sent.responses:
            if 200 <= response.status < 300:
                verdict.allows.append(f"answered {response.short()}: a credential no correct parser reads "
                                      "as a request header was honoured")
        first = sent.first
        if first is not None and first.status < 400:  # 5xx are counted already
            verdict.problems.append(f"the first answer is {first.status}: expected a 4xx or a close")
        if first is None and not sent.closed and not sent.hang:
            verdict.problems.append("no answer, and the connection was not closed")
    tally.conclude(verdict)
