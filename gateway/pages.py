"""The gateway's HTML pages: sign-in, development form, signed-in home, sign-out and error pages.

Plain HTML and inline CSS served by the gateway itself; nothing third-party is loaded, every dynamic
value is escaped, and every page is sent with ``Referrer-Policy: no-referrer`` and a strict CSP.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
"""Headers for every HTML page."""

SIGN_OUT_FIELD = "csrf_token"
"""The sign-out form's field carrying the session-bound token (see :mod:`gateway.handlers.login`)."""


def sign_out_page_headers(*, allow_http: bool) -> dict[str, str]:
    """Headers for a page holding the sign-out form: :data:`PAGE_HEADERS` with a wider ``form-action``.

    Chromium checks ``form-action`` on every redirect that follows a form submission, and a sign-out
    ends with redirects elsewhere: to the return target on an allowed host, often through the upstream's
    end-session endpoint (which may hop across its own hosts before coming back). ``'self'`` alone would
    block them, so these pages allow any https target (and http when the gateway itself is served over
    plain http, for development); ``javascript:``, ``data:`` and the like stay refused.
    """
    sources = "'self' https:" + (" http:" if allow_http else "")
    csp = PAGE_HEADERS["Content-Security-Policy"].replace("form-action 'self'", f"form-action {sources}")
    return {**PAGE_HEADERS, "Content-Security-Policy": csp}

_STYLE = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
main{max-width:26rem;margin:8vh auto;background:#fff;border-radius:12px;padding:2rem 2.2rem;
box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.06)}
h1{font-size:1.35rem;margin:0 0 .4rem}p{margin:.4rem 0 1rem;color:#4a5263}
a.button,button{display:block;width:100%;box-sizing:border-box;text-align:center;padding:.7rem 1rem;
margin:.6rem 0;border:1px solid #c9ced8;border-radius:8px;background:#fff;color:#1d2330;font:inherit;
text-decoration:none;cursor:pointer}
a.button:hover,button:hover{background:#f0f2f6}button.primary{background:#2f5bea;border-color:#2f5bea;color:#fff}
label{display:block;font-size:.9rem;margin:.8rem 0 .2rem;color:#4a5263}
input{width:100%;box-sizing:border-box;padding:.6rem .7rem;border:1px solid #c9ced8;border-radius:8px;font:inherit}
.warn{background:#fff4d6;border:1px solid #f0d48a;border-radius:8px;padding:.5rem .8rem;font-size:.9rem;color:#6b5200}
footer{margin-top:1.4rem;font-size:.8rem;color:#8a92a3}code{font-size:.85em}
main.wide{max-width:52rem}table{width:100%;border-collapse:collapse;font-size:.9rem;margin:.6rem 0 1.2rem}
th,td{text-align:left;padding:.35rem .4rem;border-bottom:1px solid #e4e7ed;vertical-align:middle}
td button{margin:0;padding:.3rem .6rem}select{width:100%;padding:.6rem .7rem;border-radius:8px;font:inherit}
code.secret{display:block;word-break:break-all;background:#f0f2f6;padding:.6rem;border-radius:8px;font-size:.95em}
"""


def _layout(title: str, body: str, *, wide: bool = False) -> str:
    main = '<main class="wide">' if wide else "<main>"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{main}{body}</main></body></html>\n")


def error_page(title: str, message: str, status: int, request_id: str,
               link: tuple[str, str] | None = None) -> str:
    """An error page; ``link`` is an optional ``(href, label)`` to recover (e.g. sign in again)."""
    action = (f'<a class="button" href="{html.escape(link[0])}">{html.escape(link[1])}</a>' if link else "")
    return _layout(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{action}"
                          f"<footer>{status} &middot; request <code>{html.escape(request_id)}</code></footer>")


def sign_in_page(choices: Sequence[tuple[str, str]], return_to: str) -> str:
    """The list of upstreams to sign in with: ``choices`` are ``(name, display name)``."""
    buttons = "".join(
        f'<a class="button" href="/login?{html.escape(urlencode({"upstream": name, "rd": return_to}))}">'
        f"Continue with {html.escape(display)}</a>" for name, display in choices)
    return _layout("Sign in", f"<h1>Sign in</h1><p>Choose how to sign in.</p>{buttons}")


def dev_form_page(callback_path: str, state: str, display_name: str) -> str:
    """The development sign-in form: any email is accepted."""
    return _layout("Sign in", (
        f"<h1>{html.escape(display_name)}</h1>"
        '<p class="warn">Development only: this form signs in any email address. '
        "Never enable the <code>dev</code> upstream in production.</p>"
        f'<form method="get" action="{html.escape(callback_path)}">'
        f'<input type="hidden" name="state" value="{html.escape(state)}">'
        '<label for="email">Email</label>'
        '<input id="email" name="email" type="email" required autofocus autocomplete="email" '
        'placeholder="ada@example.com">'
        '<label for="name">Name (optional)</label><input id="name" name="name" autocomplete="name">'
        '<label for="groups">Groups, comma-separated (optional)</label>'
        '<input id="groups" name="groups" placeholder="admin, editors">'
        '<button class="primary" type="submit">Sign in</button></form>'))


def _who(email: str, name: str) -> str:
    """``<strong>name</strong> (email)``, or just the one that is known, escaped."""
    who = f"<strong>{html.escape(name or email)}</strong>"
    return f"{who} ({html.escape(email)})" if email and name else who


def _sign_out_form(csrf_token: str, return_to: str | None, *, primary: bool = False,
                   everywhere: bool = False) -> str:
    """A same-origin POST to ``/logout`` carrying the session-bound token and, when given, the return target;
    with ``everywhere`` a second button that sends ``scope=everywhere`` too."""
    target = (f'<input type="hidden" name="rd" value="{html.escape(return_to)}">' if return_to is not None
              else "")
    css = ' class="primary"' if primary else ""
    second = ('<button type="submit" name="scope" value="everywhere">Sign out everywhere</button>'
              "<p>Sign out everywhere ends every session of yours, on every device: other browsers and "
              "your API tokens too.</p>" if everywhere else "")
    return (f'<form method="post" action="/logout">'
            f'<input type="hidden" name="{SIGN_OUT_FIELD}" value="{html.escape(csrf_token)}">{target}'
            f'<button{css} type="submit">Sign out</button>{second}</form>')


def home_page(email: str, name: str, roles: Sequence[str], csrf_token: str) -> str:
    """What ``/`` shows a signed-in browser, with a sign-out button (send with :func:`sign_out_page_headers`)."""
    role_text = html.escape(", ".join(roles)) or "none"
    return _layout("Signed in", (
        f"<h1>Signed in</h1><p>You are signed in as {_who(email, name)}.</p><p>Roles: {role_text}</p>"
        f"{_sign_out_form(csrf_token, None)}"))


def sign_out_page(site: str, email: str, name: str, csrf_token: str, return_to: str) -> str:
    """``GET /logout``: ask before signing out of ``site``; the buttons POST the token and ``return_to``
    (the second one with ``scope=everywhere``, to end every session of the user).

    ``email`` and ``name`` may both be empty (the session could not be checked just now). Send with
    :func:`sign_out_page_headers`.
    """
    who = f"<p>You are signed in as {_who(email, name)}.</p>" if email or name else ""
    return _layout("Sign out", (
        f"<h1>Sign out of {html.escape(site)}?</h1>{who}"
        f"{_sign_out_form(csrf_token, return_to, primary=True, everywhere=True)}"
        f'<a class="button" href="{html.escape(return_to)}">Stay signed in</a>'))


def signed_out_page(return_to: str) -> str:
    """``/logout`` for a browser without a session: nothing to do, and the way on."""
    return _layout("Signed out", (
        "<h1>You are signed out</h1><p>This browser has no session here.</p>"
        f'<a class="button" href="{html.escape(return_to)}">Continue</a>'))


@dataclass(frozen=True, slots=True)
class ApiTokenRow:
    """One line of the API tokens page; times are already formatted (``last_used`` empty when never)."""

    token_id: str
    name: str
    created: str
    expires: str
    last_used: str
    state: str


def api_tokens_page(email: str, name: str, rows: Sequence[ApiTokenRow], csrf_token: str,
                    lifetimes: Sequence[tuple[int, str]], default_lifetime: int, limit: int,
                    new_token: tuple[str, str] | None = None) -> str:
    """``/tokens``: the signed-in user's API tokens, a revoke button for each active one, and the form to
    mint one (``lifetimes`` are ``(seconds, label)``). ``new_token`` is ``(name, token)`` of the token just
    minted, shown this once."""
    shown = ""
    if new_token is not None:
        shown = (f"<h2>New token: {html.escape(new_token[0])}</h2>"
                 '<p class="warn">Copy it now: it is not stored and will not be shown again.</p>'
                 f'<code class="secret" id="new-token">{html.escape(new_token[1])}</code>')
    lines = "".join(
        f'<tr data-token-id="{html.escape(row.token_id)}"><td>{html.escape(row.name) or "<em>unnamed</em>"}</td>'
        f"<td><code>{html.escape(row.token_id)}</code></td><td>{html.escape(row.created)}</td>"
        f"<td>{html.escape(row.expires)}</td><td>{html.escape(row.last_used) or 'never'}</td>"
        f'<td class="state">{html.escape(row.state)}</td><td>'
        + (f'<form method="post" action="/tokens/{html.escape(row.token_id)}/revoke">'
           f'<input type="hidden" name="{SIGN_OUT_FIELD}" value="{html.escape(csrf_token)}">'
           f'<button type="submit" id="revoke-{html.escape(row.token_id)}">Revoke</button></form>'
           if row.state == "active" else "")
        + "</td></tr>" for row in rows)
    table = ("<table><thead><tr><th>Name</th><th>Id</th><th>Created</th><th>Expires</th><th>Last used</th>"
             f"<th>State</th><th></th></tr></thead><tbody>{lines}</tbody></table>" if rows
             else "<p>You have no API tokens yet.</p>")
    options = "".join(f'<option value="{seconds}"{" selected" if seconds == default_lifetime else ""}>'
                      f"{html.escape(label)}</option>" for seconds, label in lifetimes)
    return _layout("API tokens", (
        f"<h1>API tokens</h1><p>Signed in as {_who(email, name)}. A token acts as you from scripts and API "
        f"clients (<code>Authorization: Bearer &lt;token&gt;</code>) until it expires or you revoke it. You "
        f"may hold up to {limit} active tokens.</p>{shown}{table}"
        '<h2>Create a token</h2><form method="post" action="/tokens">'
        f'<input type="hidden" name="{SIGN_OUT_FIELD}" value="{html.escape(csrf_token)}">'
        '<label for="token-name">Name</label>'
        '<input id="token-name" name="name" required maxlength="100" placeholder="deploy script">'
        f'<label for="token-lifetime">Expires after</label><select id="token-lifetime" name="expires_in">{options}'
        '</select><button class="primary" type="submit" id="mint">Create token</button></form>'
        '<a class="button" href="/">Back</a>'), wide=True)


def _device_form(csrf_token: str, user_code: str, buttons: str) -> str:
    """A same-origin POST to ``/device`` carrying the session-bound token and the user code."""
    return ('<form method="post" action="/device">'
            f'<input type="hidden" name="{SIGN_OUT_FIELD}" value="{html.escape(csrf_token)}">'
            f'<input type="hidden" name="user_code" value="{html.escape(user_code)}">{buttons}</form>')


def device_code_page(email: str, name: str, csrf_token: str, user_code: str, error: str = "") -> str:
    """``/device``: where a signed-in person types the code their CLI shows (prefilled from the link's
    ``user_code``); ``error`` says what was wrong with the last one."""
    problem = f'<p class="warn" id="device-error">{html.escape(error)}</p>' if error else ""
    return _layout("Sign in a device", (
        f"<h1>Sign in a device</h1><p>Signed in as {_who(email, name)}. Enter the code your command-line tool "
        f"shows to let it act as you with an API token.</p>{problem}"
        '<form method="post" action="/device">'
        f'<input type="hidden" name="{SIGN_OUT_FIELD}" value="{html.escape(csrf_token)}">'
        '<label for="user-code">Code</label>'
        f'<input id="user-code" name="user_code" value="{html.escape(user_code)}" required maxlength="64" '
        'autocomplete="off" autocapitalize="characters" spellcheck="false" placeholder="BCDF-GHJK" autofocus>'
        '<button class="primary" type="submit" name="action" value="look_up" id="continue">Continue</button>'
        '</form><a class="button" href="/">Cancel</a>'))


def device_confirm_page(email: str, name: str, csrf_token: str, user_code: str, client_id: str, client_addr: str,
                        asked_at: str) -> str:
    """The question before a device gets a token: which client asked, from where and when; Approve or Deny."""
    buttons = ('<button class="primary" type="submit" name="action" value="approve" id="approve">Approve</button>'
               '<button type="submit" name="action" value="deny" id="deny">Deny</button>')
    return _layout("Approve this device?", (
        f"<h1>Approve this device?</h1><p>Signed in as {_who(email, name)}.</p>"
        f"<p><strong>{html.escape(client_id)}</strong> asked from <code>{html.escape(client_addr or 'unknown')}"
        f"</code> at {html.escape(asked_at)} for an API token that acts as you.</p>"
        f'<p>Code: <code id="confirm-code">{html.escape(user_code)}</code>. Approve only if your device shows this '
        "code and you started this sign-in yourself.</p>"
        f"{_device_form(csrf_token, user_code, buttons)}"))


def device_done_page(approved: bool, client_id: str) -> str:
    """After the decision: what happens next on the device."""
    if approved:
        return _layout("Device approved", (
            f"<h1>Device approved</h1><p><strong>{html.escape(client_id)}</strong> will receive its API token in a "
            'moment: you can go back to your terminal. Revoke it any time at <a href="/tokens">your API tokens</a>.'
            "</p>"))
    return _layout("Device denied", (
        f"<h1>Device denied</h1><p><strong>{html.escape(client_id)}</strong> gets no token. If you did not start "
        "this sign-in, someone may be trying to trick you into approving theirs.</p>"))
