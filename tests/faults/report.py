"""The fault report: figures the fault tests measure, each next to its goal, and the Markdown page
(``docs/reliability.md``, written by ``make faults``) and terminal block made from them.

A test asks for the session's :class:`Figures` through the ``figures`` fixture (tests/faults/conftest.py) and
records what it measured *before* it asserts on it, so a failing run still reports the figure::

    figures.record("Rolling restart behind nginx", "failed requests", len(failed), goal="0", ok=not failed)

or, to hand to helpers, a recorder bound to one scenario::

    scene = figures.scenario("PgBouncer in front of PostgreSQL (uvloop)")
    scene.record("5xx on cached sessions", fivexx, goal="0", ok=fivexx == 0)

``ok=None`` marks a figure given for context (a count, a latency), not held against a goal. Recording never
fails a test; the conftest fails the run when any recorded goal was missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Value = float | int | str | None
"""What was measured: a count, seconds or bytes (with ``unit``), a short text (``"503 / 401"``), or None
when nothing could be measured (shown as "never")."""


@dataclass(frozen=True)
class Figure:
    """One measured figure of one scenario, and the goal it is held against."""

    scenario: str
    figure: str
    value: Value
    goal: str
    ok: bool | None
    """True: goal met; False: missed; None: a figure for context, without a goal of its own."""
    unit: str = ""

    def measured(self) -> str:
        """The value as the report shows it: thousands separated, seconds to two places, with its unit."""
        if self.value is None:
            return "never"
        if isinstance(self.value, bool):
            text = "yes" if self.value else "no"
        elif isinstance(self.value, int):
            text = f"{self.value:,}"
        elif isinstance(self.value, float):
            text = f"{self.value:,.2f}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        else:
            text = self.value
        return f"{text} {self.unit}" if self.unit else text

    def verdict(self) -> str:
        return {True: "yes", False: "**NO**", None: "(context)"}[self.ok]


@dataclass
class Figures:
    """Every figure recorded in one test session, in the order recorded."""

    recorded: list[Figure] = field(default_factory=list)
    about: dict[str, str] = field(default_factory=dict)
    """What each scenario does, in a sentence or two (shown under its heading)."""

    def record(self, scenario: str, figure: str, value: Value, goal: str = "", ok: bool | None = None,
               unit: str = "") -> None:
        """Add one figure of ``scenario`` (one table in the report, in first-recorded order).

        ``goal`` says what the figure must be ("0", "≤ 2 s"); ``ok`` whether it is (None: context only).
        """
        self.recorded.append(Figure(scenario, figure, value, goal, ok, unit))

    def scenario(self, scenario: str, about: str = "") -> Scenario:
        """A recorder bound to ``scenario``, to hand to the helpers a test calls; ``about`` says what the
        scenario does (the first one given is kept)."""
        if about:
            self.about.setdefault(scenario, about)
        return Scenario(self, scenario)

    def scenarios(self) -> dict[str, list[Figure]]:
        """Figures grouped by scenario, scenarios in the order their first figure was recorded."""
        grouped: dict[str, list[Figure]] = {}
        for figure in self.recorded:
            grouped.setdefault(figure.scenario, []).append(figure)
        return grouped

    def goals(self) -> list[Figure]:
        return [f for f in self.recorded if f.ok is not None]

    def missed(self) -> list[Figure]:
        return [f for f in self.recorded if f.ok is False]

    def summary(self) -> str:
        """One line: how many scenarios and goals, and how many goals were missed."""
        goals, missed = self.goals(), self.missed()
        verdict = "every goal met" if not missed else f"{len(missed)} goals MISSED"
        return (f"{len(self.scenarios())} scenarios, {len(self.recorded)} figures, {len(goals)} goals: "
                f"{verdict}")


@dataclass(frozen=True)
class Scenario:
    """:meth:`Figures.record` with the scenario filled in."""

    figures: Figures
    name: str

    def record(self, figure: str, value: Value, goal: str = "", ok: bool | None = None, unit: str = "") -> None:
        self.figures.record(self.name, figure, value, goal, ok, unit)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(figures: Figures, header: Sequence[tuple[str, str]], goals: Iterable[str],
                    failed_tests: Sequence[str], note: str = "") -> str:
    """The report page: a title, ``note`` (e.g. that these are not the full run's figures), ``header``
    (label, text) facts about the run, the goals it holds the figures against, one table per scenario, and a
    closing summary line."""
    lines = ["# Reliability: the fault report", "",
             "Written by `make faults` (the fault tests in `tests/faults`, `GATEWAY_FAULTS_REPORT=docs/reliability.md`)"
             " from one real run. Re-run it to refresh this page; do not edit the figures by hand.", ""]
    if note:
        lines += [f"**{note}**", ""]
    lines += [f"- **{label}**: {text}" for label, text in header]
    lines += ["", "## Goals", ""]
    lines += [f"- {goal}" for goal in goals]
    for scenario, rows in figures.scenarios().items():
        lines += ["", f"## {scenario}", ""]
        if scenario in figures.about:
            lines += [figures.about[scenario], ""]
        lines += ["| figure | measured | goal | met? |", "|---|---:|---|---|"]
        lines += [f"| {_cell(f.figure)} | {_cell(f.measured())} | {_cell(f.goal or '')} | {f.verdict()} |"
                  for f in rows]
    lines += ["", "## Summary", ""]
    if failed_tests:
        lines += [f"Failed tests ({len(failed_tests)}; their figures may be missing above):", ""]
        lines += [f"- `{nodeid}`" for nodeid in failed_tests]
        lines += [""]
    for figure in figures.missed():
        lines += [f"- missed: {figure.scenario}: {figure.figure}: {figure.measured()} (goal {figure.goal})"]
    if figures.missed():
        lines += [""]
    lines += [f"**{figures.summary()}; {len(failed_tests)} tests failed.**", ""]
    return "\n".join(lines)
