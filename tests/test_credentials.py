"""Finding the token in Cookie / Authorization headers: shapes, precedence and bounds."""

from __future__ import annotations

import pytest

from gateway.credentials import Credential, CredentialProblem, CredentialSource, find_credential
from gateway.tokens import hash_token, is_well_formed, mint_token

TOKEN = mint_token()
OTHER = mint_token()


def test_minted_tokens_are_long_random_and_well_formed() -> None:
    tokens = {mint_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(is_well_formed(t) and len(t) == 47 for t in tokens)
    assert len(hash_token(TOKEN)) == 64 and TOKEN not in hash_token(TOKEN)


@pytest.mark.parametrize(("cookies", "authorization", "expected"), [
    ([f"gw_session={TOKEN}"], [], Credential(TOKEN, CredentialSource.COOKIE)),
    ([f'gw_session="{TOKEN}"'], [], Credential(TOKEN, CredentialSource.COOKIE)),
    ([f"a=1; gw_session={TOKEN}; b=2"], [], Credential(TOKEN, CredentialSource.COOKIE)),
    (["a=1", f"gw_session={TOKEN}"], [], Credential(TOKEN, CredentialSource.COOKIE)),
    ([f"gw_session={TOKEN}; gw_session={OTHER}"], [], Credential(TOKEN, CredentialSource.COOKIE)),
    ([f"xgw_session={TOKEN}"], [], CredentialProblem.MISSING),
    ([f"GW_SESSION={TOKEN}"], [], CredentialProblem.MISSING),
    ([], [], CredentialProblem.MISSING),
    (["gw_session="], [], CredentialProblem.MALFORMED),
    ([f"gw_session={TOKEN[:-1]}"], [], CredentialProblem.MALFORMED),
    ([f"gw_session={TOKEN}x"], [], CredentialProblem.MALFORMED),
    ([f"gw_session={TOKEN[:-1]}\udcff"], [], CredentialProblem.MALFORMED),
    (["gw_session=" + "a" * 9000], [], CredentialProblem.OVERSIZED),
    (["; ".join(f"c{i}=1" for i in range(200))], [], CredentialProblem.OVERSIZED),
    ([], [f"Bearer {TOKEN}"], Credential(TOKEN, CredentialSource.BEARER)),
    ([], [f"bearer   {TOKEN}  "], Credential(TOKEN, CredentialSource.BEARER)),
    ([f"gw_session={OTHER}"], [f"Bearer {TOKEN}"], Credential(TOKEN, CredentialSource.BEARER)),
    ([f"gw_session={OTHER}"], ["Bearer junk"], CredentialProblem.MALFORMED),
    ([f"gw_session={OTHER}"], ["Basic dXNlcjpwYXNz"], Credential(OTHER, CredentialSource.COOKIE)),
    ([], [f"Bearer {TOKEN}", f"Bearer {OTHER}"], CredentialProblem.MALFORMED),
    ([], ["Bearer " + "a" * 5000], CredentialProblem.OVERSIZED),
    # Inside another cookie's value is not a session cookie, whatever a lax browser let a sibling site set.
    ([f"other=x gw_session={TOKEN}"], [], CredentialProblem.MISSING),
    ([f"other=gw_session={TOKEN}"], [], CredentialProblem.MISSING),
    ([f'other="a gw_session={TOKEN}"'], [], CredentialProblem.MISSING),
    ([f"other=x\tgw_session={TOKEN}; gw_session={OTHER}"], [], Credential(OTHER, CredentialSource.COOKIE)),
    ([f"a=1;gw_session={TOKEN}"], [], Credential(TOKEN, CredentialSource.COOKIE)),
    ([f"a=1; \tgw_session={TOKEN}"], [], Credential(TOKEN, CredentialSource.COOKIE)),
    # RFC 6750: any letter case, one or more spaces; the token alone after them.
    ([f"gw_session={OTHER}"], [f"BEARER\t{TOKEN}"], Credential(TOKEN, CredentialSource.BEARER)),
    ([f"gw_session={OTHER}"], ["Bearer"], CredentialProblem.MALFORMED),
    ([f"gw_session={OTHER}"], [f"Bearer {TOKEN} extra"], CredentialProblem.MALFORMED),
    ([f"gw_session={OTHER}"], [f"Bearer,{TOKEN}"], Credential(OTHER, CredentialSource.COOKIE)),
], ids=["cookie", "quoted", "among-others", "two-headers", "first-wins", "suffix-name", "name-case", "none",
        "empty", "short", "long", "surrogate", "oversized", "too-many", "bearer", "bearer-case-space",
        "bearer-wins", "bad-bearer-not-rescued", "basic-ignored", "two-authorizations", "bearer-oversized",
        "inside-value-after-space", "inside-value-after-equals", "inside-quoted-value", "real-one-after-lookalike",
        "no-space-after-semicolon", "tab-after-semicolon", "bearer-tab-upper", "bearer-no-token",
        "bearer-trailing-junk", "not-a-scheme"])
def test_find_credential(cookies: list[str], authorization: list[str],
                         expected: Credential | CredentialProblem) -> None:
    assert find_credential(cookies, authorization, "gw_session") == expected
