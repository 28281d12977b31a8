"""What `syncer plan` and `syncer status` print: source-derived text cannot forge lines or send
terminal escapes."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from syncer import commands
from syncer.report import plan_report, status_report, visible
from syncer.sandbox import SandboxApp

from .helpers import make_config, once, sqlite_source, user_row

HOSTILE = ["1\x1b[2J", "a\nb", "c\r\x07d", "e\x9b31mf", "g\u202eh"]


def test_control_characters_are_shown_escaped() -> None:
    assert visible("1\x1b[2J") == "1\\x1b[2J"
    assert visible("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert visible("e\x9b\x7f") == "e\\x9b\\x7f"
    assert visible("g\u202eh\u2028") == "g\\u202eh\\u2028"
    assert visible("plain 사용자 id-1") == "plain 사용자 id-1"


def render(show: object) -> str:
    out = io.StringIO()
    console = Console(file=out, width=250, force_terminal=False)
    show(console)  # type: ignore[operator]
    return out.getvalue()


def assert_escaped(text: str) -> None:
    for raw in ("\x1b", "\x9b", "\x07", "\r", "\u202e"):
        assert raw not in text, repr(raw)
    for shown in ("1\\x1b[2J", "a\\nb", "c\\r\\x07d", "e\\x9b31mf", "g\\u202eh"):
        assert shown in text, shown
    assert not any(line.startswith("b") for line in text.splitlines())


def test_plan_and_status_escape_what_comes_from_the_source(tmp_path: Path,
                                                          sandbox_app: SandboxApp) -> None:
    rows = [user_row(i + 1, id=uid, phone="not a phone \x1b[31m") for i, uid in enumerate(HOSTILE)]
    src = sqlite_source(tmp_path, rows, key_type="VARCHAR(20)")
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")

    plan = commands.plan(config)
    assert len(plan.plan.samples if plan.plan else []) == len(HOSTILE)
    assert_escaped(render(lambda console: plan_report(console, plan, show_values=True)))

    sandbox_app.faults.reject_user_ids = frozenset(HOSTILE)   # quarantined, with their ids
    once(config, sandbox_app)
    report = commands.status(config)
    assert len(report.quarantined) >= len(HOSTILE) and report.problems
    assert_escaped(render(lambda console: status_report(console, report)))
