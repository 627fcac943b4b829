"""Class 3: the gateway's path normalisation held against what real nginx passes to the app (hypothesis).

Hypothesis builds request paths from letters, ``.``, ``..``, ``%2e``/``%2E`` and mixed spellings, ``%2f``,
empty segments (``//``), ``;parameters``, escapes of unreserved characters and an optional trailing slash.
Each goes through nginx (deploy/nginx/protect-app.conf) with a valid session to the recording echo app. Then:

- the path the app received, normalised by ``gateway.facts.normalise_path``, must equal the normalisation of
  the path the client sent (what the gateway was asked about is what the app got);
- when the normalisation of the original lies under a denied prefix, or the gateway refuses it as
  ambiguous, the app must not have received the request;
- and, as in every class, the app must not be served anything that routes under a denied prefix.

Every example is a case in the tally. Examples are bounded: a fixed, derandomised set in the normal run, many
more (random) with ``GATEWAY_SECURITY_FULL=1``.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import facts
from tests.deploy.stack import COOKIE
from tests.security.corpus import FULL, Tally, Verdict, attempt
from tests.security.rawhttp import request
from tests.security.stacks import DENIED_PREFIXES, SecurityStack

KLASS = "3-differential"
EXAMPLES = 600 if FULL else 60

SEGMENTS = [
    "a", "b", "x", "public", "forbidden", "api", "FORBIDDEN", "forbidden.json",
    ".", "..", "%2e", "%2E", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "...",
    "%2f", "%2F", "a%2fb", "..%2f", "%2f..", "",
    ";x", "forbidden;x", "..;", ";", "a;b=c",
    "%61", "%7E", "~", "%2D", "%5F", "%30", "%66orbidden", "f%6frbidden",
]

segments = st.sampled_from(SEGMENTS)
paths = st.builds(lambda parts, trailing: "/" + "/".join(parts) + ("/" if trailing else ""),
                  st.lists(segments, min_size=1, max_size=7), st.booleans())


def under_denied(path: str) -> bool:
    """What the access rules say about a normalised path (``/x/**`` covers ``/x`` itself)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in DENIED_PREFIXES)


def judge(stack: SecurityStack, path: str) -> Verdict:
    """Send ``path`` through nginx and compare what the app received with what the gateway judged."""
    data = request("GET", path, [("Cookie", f"{COOKIE}={stack.tokens.valid}"), ("Accept", "application/json")])
    verdict, _, received = attempt(stack, KLASS, f"differential-{path}", stack.nginx.port, data,
                                   secrets=stack.tokens.all())
    try:
        judged: str | None = facts.normalise_path(path)
    except facts.MalformedOriginalRequest:
        judged = None  # the gateway refuses it (401): nothing may reach the app
    for record in received:
        raw = str(record["raw_path"])
        if judged is None:
            verdict.allows.append(f"the gateway's normaliser refuses {path!r}, yet the app was served {raw!r}")
            continue
        if under_denied(judged):
            verdict.allows.append(f"{path!r} normalises to the denied {judged!r}, yet the app was served {raw!r}")
        try:
            served = facts.normalise_path(raw)
        except facts.MalformedOriginalRequest as exc:
            verdict.problems.append(f"the app was served {raw!r}, which the normaliser refuses ({exc})")
            continue
        if served != judged:
            verdict.problems.append(f"the gateway judged {judged!r} but the app was served {raw!r}, which "
                                    f"normalises to {served!r}")
    return verdict


SEEDS = ["/;/forbidden;x/", "/api/;x/%66orbidden", "/a/..;/forbidden", "/forbidden;x", "/%2e%2e/forbidden",
         "//forbidden/x", "/a//../forbidden", "/forbidden%2fx", "/public/%2E%2E/api/forbidden/"]
"""Paths every run tries besides hypothesis's own (found by earlier runs, or classic)."""


def seeds(test: Callable[..., None]) -> Callable[..., None]:
    for path in reversed(SEEDS):
        test = example(path=path)(test)
    return test


def test_nginx_passes_the_app_the_path_the_gateway_judged(stack: SecurityStack, tally: Tally) -> None:
    verdicts: dict[str, Verdict] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not FULL,
              suppress_health_check=list(HealthCheck))
    @given(path=paths)
    @seeds
    def one(path: str) -> None:
        if path not in verdicts:
            verdicts[path] = judge(stack, path)

    one()
    for verdict in verdicts.values():
        tally.record(verdict)
    failed = [v for v in verdicts.values() if not v.ok]
    assert not failed, f"{len(failed)} of {len(verdicts)} paths:\n" + "\n".join(v.explain() for v in failed[:40])
