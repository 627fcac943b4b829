"""Access-rule path patterns: prefixes on a segment boundary and globs where ``**`` is zero or more segments."""

from __future__ import annotations

import pytest

from gateway.access import PathPattern, map_roles, rule_problems


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("/admin/**", "/admin", True),
    ("/admin/**", "/admin/", True),
    ("/admin/**", "/admin/x", True),
    ("/admin/**", "/admin/x/y/", True),
    ("/admin/**", "/adminx", False),
    ("/admin/**", "/", False),
    ("/a/**/b", "/a/b", True),
    ("/a/**/b", "/a/x/y/b", True),
    ("/a/**/b", "/a/xb", False),
    ("/a/*", "/a/x", True),
    ("/a/*", "/a/x/y", False),
    ("/a/*", "/a", False),
    ("/x/**.json", "/x/a/b.json", True),
    ("/admin", "/admin", True),
    ("/admin", "/admin/", True),
    ("/admin", "/admin/x", True),
    ("/admin", "/adminx", False),
    ("/admin/", "/admin", True),
    ("/a?c", "/abc", True),
    ("/a?c", "/a/c", False),
], ids=lambda v: str(v))
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    assert PathPattern.parse(pattern).matches(path) is matches


def test_a_misspelt_rule_key_is_a_problem_with_a_suggestion() -> None:
    """A typo must never switch a condition off: ``path`` would make a deny rule match every path."""
    assert rule_problems([{"action": "deny", "path": ["/admin/**"]}]) == [
        "access.rules[1].path: unknown setting; did you mean 'paths'?"]


@pytest.mark.parametrize(("groups", "expected"), [
    (["staff,admin"], ("staff-admin",)),
    (["staff,admin", "dev"], ("staff-admin", "dev")),
    (["a b", "tab\tx", "nl\nx", "", "ok"], ("ok",)),
], ids=["comma-only-mapped", "comma-dropped-others-kept", "whitespace-and-empty-dropped"])
def test_passthrough_groups_that_would_split_in_a_header_are_dropped(groups: list[str],
                                                                       expected: tuple[str, ...]) -> None:
    """An upstream group named "staff,admin" must not reach apps as the two roles staff and admin."""
    table = {"staff,admin": ["staff-admin"]}
    assert map_roles(groups, table, passthrough=True) == expected
