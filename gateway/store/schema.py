"""The schema's migrations as packaged SQL files, one folder per dialect."""

from __future__ import annotations

import re
from importlib import resources

_VERSION_RE = re.compile(r"\d{4}_[a-z0-9_]+")


def migration_scripts(dialect: str) -> list[tuple[str, str]]:
    """The packaged migrations for ``dialect`` (``sqlite`` or ``postgres``) as (version, SQL), in order.

    The version is the file name without ``.sql`` (``0001_initial``); files are applied by name order.
    """
    folder = resources.files("gateway.store").joinpath("migrations").joinpath(dialect)
    scripts: list[tuple[str, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version = name[: -len(".sql")]
        if not _VERSION_RE.fullmatch(version):
            raise RuntimeError(f"migration file {name!r} must be named NNNN_description.sql")
        scripts.append((version, entry.read_text(encoding="utf-8")))
    scripts.sort()
    return scripts
