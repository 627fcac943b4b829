"""The configuration reference (``docs/configuration.md``), rendered from the settings code so it cannot drift.

Every setting comes from :class:`~gateway.settings.sections.Settings` (its dotted name, TOML table and key,
``GATEWAY_*`` variable, type, default) and every upstream key from the config dataclass of each type in
the registry (:data:`upstreams.PROVIDER_TYPES`): the field a provider's ``parse_config`` returns, plus a
preset's ``preset_terms``. The meaning of each is the field's attribute docstring (the string literal
under the field), read from the source with :mod:`ast`, so the words live next to the field they describe.
``gateway config-reference`` prints the page; ``tests/test_config_reference.py`` fails when the committed
page differs from it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import json
import re
import sys
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.settings.sections import SECRET_SETTINGS, Duration, RoleMap, RuleTables, Settings, UpstreamTables
from gateway.settings.sources import UPSTREAM_ENV_PREFIX, env_name
from upstreams import PROVIDER_TYPES, provider_class

REGENERATE = ".venv/bin/gateway config-reference > docs/configuration.md"
"""The command that rewrites the committed page."""

_SETTING_TYPES: Mapping[Any, tuple[str, bool]] = {
    str: ("string", True),
    bool: ("boolean", True),
    int: ("integer", True),
    Duration: ("duration", True),
    tuple[str, ...]: ("list of strings", True),
    Mapping[str, str]: ("table of strings", True),
    UpstreamTables: ("tables", False),
    RuleTables: ("array of tables", False),
    RoleMap: ("table of role lists", False),
}
"""A setting's type in plain words, and whether a ``GATEWAY_*`` variable can carry it (tables cannot)."""

_UPSTREAM_TYPES: Mapping[Any, str] = {
    str: "string",
    bool: "boolean",
    float: "number",
    aiohttp.ClientTimeout: "number (seconds)",
    tuple[str, ...]: "list of strings",
    tuple[tuple[str, str], ...]: "table of strings",
}
"""An upstream key's type in plain words, by the type of the dataclass field it is parsed into."""

_PLACEHOLDER = "placeholder-{}"
"""What each of a preset's own keys is set to when asking the preset what it fills in (a valid host name,
so the preset's checks accept it); shown as ``<key>`` on the page."""


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """One setting as the reference lists it."""

    path: tuple[str, ...]
    kind: str
    """The type in plain words (``duration``, ``list of strings``...)."""
    default: str
    """The default as a TOML value."""
    env: str
    """``GATEWAY_X[_FILE]``, or "" when only the config file can carry the value."""
    secret: bool
    meaning: str


@dataclass(frozen=True, slots=True)
class SectionDoc:
    """A TOML table of settings (the top level has ``prefix == ()``) and its settings."""

    prefix: tuple[str, ...]
    summary: str
    settings: tuple[SettingDoc, ...]


@dataclass(frozen=True, slots=True)
class UpstreamKeyDoc:
    """One key of an ``[upstreams.<name>]`` table as the reference lists it."""

    key: str
    kind: str
    default: str
    """The default as a TOML value, or "" when the key has none."""
    env: bool
    """Whether ``GATEWAY_UPSTREAMS_<NAME>_<KEY>[_FILE]`` can carry it (string keys only)."""
    meaning: str


@dataclass(frozen=True, slots=True)
class UpstreamTypeDoc:
    """One upstream ``type`` from the registry.

    ``keys`` are the keys documented under this type; ``shares`` names the earlier type whose keys this
    one also takes (a preset's OIDC keys), or is "". ``fills`` is what the type fills in when the table
    leaves it out (``key -> TOML values``, placeholders as ``<key>``); ``required`` maps each required key
    to what may stand in for it ("" when nothing may).
    """

    type_name: str
    summary: str
    keys: tuple[UpstreamKeyDoc, ...]
    shares: str
    fills: tuple[tuple[str, tuple[str, ...]], ...]
    required: tuple[tuple[str, str], ...]


# ---- reading the code ---------------------------------------------------------------------------------


@functools.cache
def _module_classes(module_name: str) -> Mapping[str, ast.ClassDef]:
    tree = ast.parse(inspect.getsource(sys.modules[module_name]))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal right under it in the class body), by name.

    Fields without one are absent. Raises KeyError when ``cls`` is not defined at the top level of its module.
    """
    docs: dict[str, str] = {}
    body = _module_classes(cls.__module__)[cls.__name__].body
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _summary(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring on one line."""
    return " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())


def _first_sentence(obj: object) -> str:
    """The first sentence (up to ``. `` or ``; ``) of ``obj``'s docstring."""
    text = _summary(obj)
    cut = min((i for i in (text.find(". "), text.find("; ")) if i >= 0), default=len(text))
    return text[:cut].rstrip(".") + "."


# ---- values as TOML ------------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it (``7d``, ``12h``, ``75s``, ``0.5s``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:g}s"


def toml_value(value: object) -> str:
    """``value`` written as TOML (durations are passed in already as their text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, aiohttp.ClientTimeout):
        return toml_value(value.total)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _field_default(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# ---- settings ------------------------------------------------------------------------------------------


def setting_sections() -> tuple[SectionDoc, ...]:
    """Every section of :class:`Settings`, the top level first, each with its settings in field order.

    Raises TypeError for a setting of a type the reference cannot describe, ValueError for one without
    a docstring.
    """
    return tuple(_sections(Settings, (), "Settings of the process itself: top-level keys."))


def _sections(cls: type, prefix: tuple[str, ...], summary: str) -> Iterator[SectionDoc]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    leaves: list[SettingDoc] = []
    nested: list[tuple[str, type]] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            nested.append((f.name, typing.cast(type, hint)))
            continue
        path = (*prefix, f.name)
        dotted = ".".join(path)
        if hint not in _SETTING_TYPES:
            raise TypeError(f"{dotted}: describe the type {hint!r} in gateway.settings.reference")
        if f.name not in docs:
            raise ValueError(f"{dotted}: add a one-line docstring under the field in {cls.__module__}")
        kind, from_env = _SETTING_TYPES[hint]
        default = _field_default(f)
        leaves.append(SettingDoc(
            path=path, kind=kind, meaning=docs[f.name], secret=dotted in SECRET_SETTINGS,
            default=json.dumps(duration_text(typing.cast(float, default))) if hint is Duration
            else toml_value(default),
            env=env_name(path) + "[_FILE]" if from_env else ""))
    yield SectionDoc(prefix=prefix, summary=summary, settings=tuple(leaves))
    for name, section in nested:
        yield from _sections(section, (*prefix, name), _summary(section))


# ---- upstreams -----------------------------------------------------------------------------------------


def _definitions(type_name: str) -> tuple[type, type | None]:
    """The dataclass ``type_name``'s ``parse_config`` returns, and its ``preset_terms`` (or None).

    Raises ValueError when they do not account for exactly the keys the type accepts: the reference
    could then not describe every key.
    """
    cls = provider_class(type_name)
    # parse_config is not part of ProviderFactory: every provider class has one, returning its dataclass.
    settings = typing.get_type_hints(typing.cast(Any, cls).parse_config)["return"]
    terms: type | None = getattr(cls, "preset_terms", None)
    fields = {f.name for d in (settings, *((terms,) if terms else ())) for f in dataclasses.fields(d)}
    if {"type", *fields} != cls.config_keys():
        raise ValueError(f"upstream type {type_name!r}: its config dataclasses do not match config_keys()")
    return settings, terms


def _key_docs(definition: type) -> tuple[UpstreamKeyDoc, ...]:
    hints = typing.get_type_hints(definition)
    docs = field_docs(definition)
    out: list[UpstreamKeyDoc] = []
    for f in dataclasses.fields(definition):
        where = f"{definition.__module__}.{definition.__name__}.{f.name}"
        if hints[f.name] not in _UPSTREAM_TYPES:
            raise TypeError(f"{where}: describe the type {hints[f.name]!r} in gateway.settings.reference")
        if f.name not in docs:
            raise ValueError(f"{where}: add a one-line docstring under the field")
        default = _field_default(f)
        if hints[f.name] == tuple[tuple[str, str], ...] and default is not dataclasses.MISSING:
            default = dict(typing.cast(tuple[tuple[str, str], ...], default))  # a TOML table, even when empty
        out.append(UpstreamKeyDoc(key=f.name, kind=_UPSTREAM_TYPES[hints[f.name]], meaning=docs[f.name],
                                  default="" if default is dataclasses.MISSING else toml_value(default),
                                  env=hints[f.name] is str))
    return tuple(out)


def _fills(type_name: str, terms: type | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """What the type's ``with_defaults`` adds to a table holding none, each, and all of its own keys."""
    with_defaults = getattr(provider_class(type_name), "with_defaults", None)
    if with_defaults is None:
        return ()
    placeholders = {f.name: _PLACEHOLDER.format(f.name.replace("_", "-"))
                    for f in (dataclasses.fields(terms) if terms else ())}
    tables = [{}, *({key: value} for key, value in placeholders.items()), placeholders]
    fills: dict[str, list[str]] = {}
    for table in tables:
        for key, value in with_defaults(table).items():
            if key in table:
                continue
            text = toml_value(value)
            for term, placeholder in placeholders.items():
                text = text.replace(placeholder, f"<{term}>")
            if text not in fills.setdefault(key, []):
                fills[key].append(text)
    return tuple((key, tuple(values)) for key, values in fills.items())


def _required(type_name: str) -> tuple[tuple[str, str], ...]:
    """The keys an otherwise empty table of ``type_name`` is told it requires, with what may replace them."""
    required: list[tuple[str, str]] = []
    for problem in provider_class(type_name).config_problems("x", {"type": type_name}):
        match = re.fullmatch(r"upstreams\.x\.(\w+): required(.*)", problem)
        if match:
            instead = re.sub(r"\s*\(e\.g\. [^)]*\)", "", match.group(2)).strip(" ,()")
            required.append((match.group(1), instead))
    return tuple(required)


def upstream_types() -> tuple[UpstreamTypeDoc, ...]:
    """Every registered upstream type, in registry order.

    A type whose main dataclass an earlier type without preset terms already documented (an OIDC
    preset) lists only its own keys and names that type in ``shares``.
    """
    documented: dict[type, str] = {}
    out: list[UpstreamTypeDoc] = []
    for type_name in _documentation_order():
        settings, terms = _definitions(type_name)
        shares = documented.get(settings, "")
        if shares:
            keys = _key_docs(terms) if terms is not None else ()
        else:
            documented[settings] = type_name
            keys = _key_docs(settings) + (_key_docs(terms) if terms is not None else ())
        out.append(UpstreamTypeDoc(type_name=type_name, summary=_first_sentence(provider_class(type_name)),
                                   keys=keys, shares=shares, fills=_fills(type_name, terms),
                                   required=_required(type_name)))
    order = list(PROVIDER_TYPES)
    return tuple(sorted(out, key=lambda doc: order.index(doc.type_name)))


def _documentation_order() -> list[str]:
    """Registry order, except that types without preset terms come first, so presets can refer to them."""
    return sorted(PROVIDER_TYPES, key=lambda t: getattr(provider_class(t), "preset_terms", None) is not None)


# ---- the page ------------------------------------------------------------------------------------------

_CODE = re.compile(r"``(.+?)``|`([^`]+)`")
_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod):`~?([^`]+)`")


def markdown(text: str) -> str:
    """A docstring's text as one Markdown table cell: ``code`` to `code`, Sphinx roles to code, and ``|``
    ``<`` ``>`` escaped outside code (GitHub would read ``<name>`` as an HTML tag)."""
    text = _ROLE.sub(lambda m: f"``{m.group(1).rsplit('.', 1)[-1]}``", text)
    out: list[str] = []
    position = 0
    for match in _CODE.finditer(text):
        out.append(_escape(text[position:match.start()]))
        out.append("`" + (match.group(1) or match.group(2)).replace("|", "\\|") + "`")
        position = match.end()
    out.append(_escape(text[position:]))
    return "".join(out)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


_INTRO = f"""\
# Configuration reference

<!-- Generated from the settings code by `gateway config-reference`: do not edit by hand.
     Regenerate with `{REGENERATE}`. -->

This page lists every setting and every key of every upstream type, generated from the code that reads
them (`gateway config-reference` prints it for the installed version).

Sources, lowest to highest: built-in defaults < TOML file (`--config FILE` or `GATEWAY_CONFIG`) <
`GATEWAY_*` environment variables < command-line flags (`--database-url`, and `--listen`, `--workers`,
`--public-url` for `gateway serve`). Each setting has a dotted name (`cookie.name`), a TOML key in its
table (`[cookie]` `name`) and an environment variable: `GATEWAY_` and the dotted name in capitals, dots
as underscores (`GATEWAY_COOKIE_NAME`). Its `_FILE` variant (`GATEWAY_COOKIE_NAME_FILE`) reads the value
from a file instead, as Kubernetes mounts secrets; setting both is a problem. An unknown key or
`GATEWAY_*` variable is a problem too, so a typo cannot switch a restriction off: `gateway check-config`
lists every problem at once.

Types, as written in the TOML file and in an environment variable:

| type | in the TOML file | in an environment variable |
|---|---|---|
| string | `"text"` | `text` |
| boolean | `true`, `false` | `true`, `false`, `1`, `0`, `yes`, `no`, `on`, `off` |
| integer | `10` | `10` |
| duration | `90` (seconds), `"90s"`, `"15m"`, `"12h"`, `"7d"` (also `ms`, `w`) | `90`, `90s`, `15m`... |
| list of strings | `["a", "b"]` | `a,b` |
| table of strings | `{{ "X-Hasura-Email" = "email" }}` | `X-Hasura-Email=email,X-Hasura-Name=name` |
| tables, array of tables, table of role lists | as described | config file only |
"""


def render_reference() -> str:
    """The whole page, as committed in ``docs/configuration.md``.

    Raises TypeError or ValueError when a setting or upstream key cannot be described (an unknown type,
    a missing docstring, config dataclasses that do not match a type's keys).
    """
    lines = [_INTRO, "## Settings", ""]
    for section in setting_sections():
        heading = "Top level" if not section.prefix else _code("[" + ".".join(section.prefix) + "]")
        lines += [f"### {heading}", "", markdown(section.summary), "",
                  "| setting | environment variable | type | default | meaning |", "|---|---|---|---|---|"]
        for s in section.settings:
            env = _code(s.env) if s.env else "config file only"
            meaning = markdown(s.meaning) + (" **Secret**: prefer the `_FILE` variable." if s.secret else "")
            lines.append(f"| {_code('.'.join(s.path))} | {env} | {s.kind} | {_code(s.default)} | {meaning} |")
        lines.append("")
    lines += [_UPSTREAMS_INTRO.format(prefix=UPSTREAM_ENV_PREFIX)]
    for doc in upstream_types():
        lines += [f'### `type = "{doc.type_name}"`', "", markdown(doc.summary), ""]
        if doc.shares:
            lines += [f'Takes every key of [`type = "{doc.shares}"`](#type--{doc.shares}), and these of its own:'
                      if doc.keys else f'Takes every key of [`type = "{doc.shares}"`](#type--{doc.shares}).', ""]
        if doc.keys:
            lines += ["| key | type | default | required | environment variable | meaning |",
                      "|---|---|---|---|---|---|"]
            required = dict(doc.required)
            for k in doc.keys:
                need = ("yes" + (f" ({markdown(required[k.key])})" if required[k.key] else "")
                        if k.key in required else "no")
                env = _code(f"{UPSTREAM_ENV_PREFIX}<NAME>_{k.key.upper()}[_FILE]") if k.env else "config file only"
                lines.append(f"| {_code(k.key)} | {k.kind} | {_code(k.default) if k.default else '-'} | {need} "
                             f"| {env} | {markdown(k.meaning)} |")
            lines.append("")
        if doc.shares:
            own = {k.key for k in doc.keys}
            also = [f"{_code(key)}" + (f" ({markdown(instead)})" if instead else "")
                    for key, instead in doc.required if key not in own]
            if also:
                lines += ["Also required: " + ", ".join(also) + ".", ""]
        if doc.fills:
            lines += ["Fills in, unless the table sets them:", "", "| key | value |", "|---|---|"]
            lines += [f"| {_code(key)} | {' or '.join(_code(v) for v in values)} |" for key, values in doc.fills]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


_UPSTREAMS_INTRO = """\
## Upstreams

Each identity provider users may sign in with is a table `[upstreams.<name>]` (a name of lower-case
letters, digits and dashes), whose `type` is one of those below; register `<public_url>/callback/<name>`
as its redirect URI. A key the type does not take is a problem, with the key you probably meant.

Secrets stay out of the file: `{prefix}<NAME>_<KEY>` sets `<key>` of the table `[upstreams.<name>]`
that the config file declares, `<NAME>` being the name in capitals with dashes as underscores
(`[upstreams.corp-eu]` `client_secret`: `{prefix}CORP_EU_CLIENT_SECRET`), and
`{prefix}<NAME>_<KEY>_FILE` reads it from a file. These variables carry strings, so only string keys
can be set this way; the others belong in the file.
"""
