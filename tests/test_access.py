"""Access-rule path patterns: prefixes on a segment boundary and globs where ``**`` is zero or more segments."""

from __future__ import annotations

import pytest

from gateway.access import PathPattern, rule_problems


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
