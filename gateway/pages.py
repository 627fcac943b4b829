"""The gateway's HTML pages: sign-in, development form, signed-in home and error pages.

Plain HTML and inline CSS served by the gateway itself; nothing third-party is loaded, every dynamic
value is escaped, and every page is sent with ``Referrer-Policy: no-referrer`` and a strict CSP.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
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
"""


def _layout(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


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


def home_page(email: str, name: str, roles: Sequence[str]) -> str:
    """What ``/`` shows a signed-in browser."""
    who = html.escape(name or email)
    role_text = html.escape(", ".join(roles)) or "none"
    return _layout("Signed in", (
        f"<h1>Signed in</h1><p>You are signed in as <strong>{who}</strong>"
        f"{' (' + html.escape(email) + ')' if email and name else ''}.</p><p>Roles: {role_text}</p>"
        '<form method="post" action="/logout"><button type="submit">Sign out</button></form>'))
