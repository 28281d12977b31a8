"""The ``syncer`` command line. Each subcommand parses its options, calls one function of
:mod:`syncer.commands` (or the daemon, sandbox, demo), prints the result and exits with the
contract's code: 0 done; 1 some users could not be delivered; 2 bad config or usage; 3 a destination
rejected the credentials."""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
import structlog
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from syncer import __version__, commands, logs
from syncer.config import Config
from syncer.configfile import load, resolve_path
from syncer.errors import ConfigError, StateMissing, SyncerError
from syncer.logs import LEVELS
from syncer.pipeline import Progress as ProgressFn
from syncer.results import PassOutcome, PassResult

F = TypeVar("F", bound=Callable[..., Any])
log = structlog.get_logger("syncer.cli")

EXIT_OK, EXIT_UNDELIVERED, EXIT_CONFIG, EXIT_CREDENTIALS = 0, 1, 2, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT


def _level(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value.lower() if value else None


def common(needs_config: bool = True, log_stream: str = "stderr",
           default_level: str = "info", secrets: bool = True) -> Callable[[F], F]:
    """``-c/--config`` (where the command needs one) and ``--log-level`` on every command; both
    may also be given before the command (``syncer -c FILE once``)."""

    def wrap(fn: F) -> F:
        @click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False),
                      default=None, callback=_level,
                      help=f"How much to log: debug, info, warning, error (any case) "
                           f"[default: {default_level}].")
        @functools.wraps(fn)
        def inner(*args: Any, log_level: str | None, **kwargs: Any) -> Any:
            outer = click.get_current_context().find_root().params
            level = log_level or outer.get("log_level") or default_level
            logs.configure(level, sys.stdout if log_stream == "stdout" else sys.stderr)
            path = None
            try:
                if needs_config:
                    path = str(resolve_path(kwargs.pop("config") or outer.get("config")))
                    config = load(path, secrets=secrets)
                    logs.set_secrets(config.secret_values())
                    return fn(config, *args, **kwargs)
                return fn(*args, **kwargs)
            except ConfigError as exc:
                prefix = f"{path}: " if path and exc.path is None else ""
                for line in str(exc).splitlines():
                    click.echo(f"error: {prefix}{line}", err=True)
                sys.exit(EXIT_CONFIG)
            except SyncerError as exc:   # a database down, a sender already running, ...
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_UNDELIVERED)
            except KeyboardInterrupt:   # a second Ctrl-C: no waiting for requests in flight
                click.echo("aborted: what was in flight is sent again by the next pass",
                           err=True)
                sys.exit(EXIT_INTERRUPTED)

        if needs_config:
            inner = click.option(
                "-c", "--config", type=click.Path(dir_okay=False), default=None,
                help="Config file [default: $SYNCER_CONFIG, then /etc/syncer/config.toml].",
            )(inner)
        return inner  # type: ignore[return-value]

    return wrap


class Interrupt:
    """The first SIGINT (Ctrl-C) or SIGTERM during a command that sends stops its pass the way
    the daemon stops: no new work, the requests in flight finish or time out, what was
    delivered is recorded. A second one aborts at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()
        log.warning("pass.stopping", signal=signal.Signals(signum).name)
        click.echo("stopping: the requests in flight finish and what was delivered is "
                   "recorded (Ctrl-C again aborts at once)", err=True)

    @classmethod
    @contextmanager
    def catching(cls) -> Iterator[Interrupt]:
        interrupt = cls()
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT,
                                                                   signal.SIGTERM)}
        try:
            yield interrupt
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _finish(console: Console, result: PassResult, interrupt: Interrupt) -> NoReturn:
    """Print the pass and exit with its code, or 128 + the signal when one stopped it."""
    from syncer.report import pass_summary

    pass_summary(console, result)
    if result.outcome is PassOutcome.STOPPED and interrupt.signum is not None:
        delivered = sum(result.counts[k] for k in ("updated", "deleted", "withdrawn"))
        left = result.counts.totals.get("left")   # absent: stopped before anything was read
        click.echo(f"stopped: {delivered} delivered, "
                   + ("the rest" if left is None else str(left)) + " left for the next pass")
        sys.exit(128 + interrupt.signum)
    sys.exit(result.exit_code)


@contextmanager
def progress_bar(console: Console) -> Iterator[ProgressFn | None]:
    """A progress bar on a terminal; nothing off one."""
    if not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("capture", total=None)

        def report(phase: str, done: int, total: int | None) -> None:
            bar.update(task, description=phase, completed=done, total=total)

        yield report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncer")
@click.option("-c", "--config", type=click.Path(dir_okay=False), default=None,
              help="Config file for the command [default: $SYNCER_CONFIG, then "
                   "/etc/syncer/config.toml].")
@click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None,
              callback=_level, help="How much to log: debug, info, warning, error (any case).")
def main(config: str | None, log_level: str | None) -> None:
    """Keep an application's users in step with Blux (CRM) and nachocode (app push).

    Exit codes: 0 done; 1 some users could not be delivered (or a database could not be
    reached); 2 bad config or usage; 3 a destination rejected the credentials."""


def new_state_option(fn: F) -> F:
    return click.option(
        "--new-state", is_flag=True,
        help="Start with a new, empty state even though the outbox shows that another state "
             "delivered the users (every user is sent again).")(fn)


@main.command()
@new_state_option
@common(log_stream="stdout")
def run(config: Config, new_state: bool) -> None:
    """The daemon: passes every [schedule] interval_seconds, reconcile on [capture]
    reconcile_cron, instant wake-ups in outbox mode on PostgreSQL; stops cleanly on SIGTERM."""
    from syncer.daemon import run_daemon

    sys.exit(run_daemon(config, new_state=new_state))


@main.command()
@click.option("--reconcile", is_flag=True,
              help="Diff the whole table whatever the capture mode (catches hard deletes).")
@click.option("--confirm", is_flag=True,
              help="Let a pass through that deletes more than max_delete_fraction of the users.")
@new_state_option
@common()
def once(config: Config, reconcile: bool, confirm: bool, new_state: bool) -> None:
    """One pass, then exit: 0 only when everything due was delivered."""
    with Interrupt.catching() as interrupt, progress_bar(Console(stderr=True)) as progress:
        result = commands.once(config, reconcile=reconcile, confirm=confirm, progress=progress,
                               new_state=new_state, stop=interrupt.event)
    _finish(Console(), result, interrupt)


@main.command()
@click.option("--reconcile", is_flag=True, help="Plan a full diff instead of an incremental pass.")
@click.option("--show-values/--hide-values", default=None,
              help="Show the sample's new values (personal data) [default: on a terminal only].")
@common(secrets=False)
def plan(config: Config, reconcile: bool, show_values: bool | None) -> None:
    """Dry run: what a pass would send, per endpoint, with a sample and the time it would take.
    Sends nothing and changes nothing."""
    from syncer.report import plan_report

    missing = commands.missing_state(config)
    with progress_bar(Console(stderr=True)) as progress:
        result = commands.plan(config, reconcile=reconcile, progress=progress)
    console = Console()
    if missing is not None:
        click.echo(f"{missing}: this is what the first pass would send")
    plan_report(console, result, console.is_terminal if show_values is None else show_values)
    sys.exit(EXIT_OK if result.outcome is PassOutcome.DRY_RUN else EXIT_UNDELIVERED)


@main.command()
@click.option("--limit", default=10, show_default=True, help="Rows per table.")
@common(secrets=False)
def status(config: Config, limit: int) -> None:
    """Recent passes, pending and lag, bulk work under way (how far, time left), quarantined
    users with the reason, destination health. Exit 1 when there is no state yet (no pass has
    run with this config)."""
    from syncer.report import status_report

    try:
        report = commands.status(config, limit=limit)
    except StateMissing as exc:
        click.echo(str(exc))   # one line, never wrapped: it holds a path
        sys.exit(EXIT_UNDELIVERED)
    status_report(Console(), report)


def _requeued(result: commands.Requeued, what: str, interrupt: Interrupt) -> None:
    console = Console()
    if result.sender is not None:
        console.print(f"{result.users} users {what}; the running daemon "
                      f"({escape(result.sender)}) sends them at its next pass")
    else:
        console.print(f"{result.users} users {what}; sending them now")
    for name, ids in (("not quarantined", result.not_quarantined), ("unknown", result.unknown)):
        if ids:
            more = f" (and {len(ids) - 10} more)" if len(ids) > 10 else ""
            console.print(f"  {name}: {escape(', '.join(ids[:10]))}{more}")
    if result.sender is not None:
        sys.exit(EXIT_OK)
    assert result.result is not None
    _finish(console, result.result, interrupt)


@main.command()
@click.option("--user", "users", multiple=True, metavar="ID",
              help="Only this user (repeat for more) [default: every quarantined user].")
@new_state_option
@common()
def retry(config: Config, users: tuple[str, ...], new_state: bool) -> None:
    """Send quarantined users again now (after fixing what the destination refused)."""
    with Interrupt.catching() as interrupt, progress_bar(Console(stderr=True)) as progress:
        result = commands.retry(config, users or None, progress=progress, new_state=new_state,
                                stop=interrupt.event)
    _requeued(result, "taken out of quarantine", interrupt)


@main.command()
@click.option("--user", "users", multiple=True, metavar="ID",
              help="This user (repeat for more).")
@click.option("--all", "everyone", is_flag=True, help="Every user (after a destination was "
                                                     "wiped, say).")
@click.option("--new-key", is_flag=True,
              help="With --all: start a new fingerprint key (the old one is lost or leaked).")
@new_state_option
@common()
def resync(config: Config, users: tuple[str, ...], everyone: bool, new_key: bool,
           new_state: bool) -> None:
    """Forget what was delivered so these users are sent again, under the same rate limits and
    safety valve. Deletions already sent are not undone."""
    if bool(users) == everyone:
        raise click.UsageError("give --user ID (one or more) or --all")
    with Interrupt.catching() as interrupt, progress_bar(Console(stderr=True)) as progress:
        result = commands.resync(config, users or None, new_key=new_key, progress=progress,
                                 new_state=new_state, stop=interrupt.event)
    _requeued(result, "to be sent again", interrupt)


@main.command()
@common(secrets=False)
def migrate(config: Config) -> None:
    """Create or upgrade the state schema (also done at every start)."""
    where = commands.migrate(config)
    click.echo(f"state schema is up to date in {where}")


@main.command()
@click.argument("user")
@click.option("--destination", type=click.Choice(["blux", "nachocode"]), default=None,
              help="Only this destination's entries.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@common(secrets=False)
def history(config: Config, user: str, destination: str | None, as_json: bool) -> None:
    """One user's timeline from the audit trail: each operation per destination, the fields
    that changed (names only; consents with their new value), when it was sent and
    acknowledged, the outcome. Exit 1 when there is no entry for the user."""
    from syncer import audit

    entries = audit.history(config, user, destination)
    if as_json:
        click.echo(json.dumps({"user_id": user.strip(),
                               "entries": [audit.entry_json(e) for e in entries]}, indent=2))
    else:
        for line in audit.timeline_lines(user.strip(), entries):
            click.echo(line)
    sys.exit(EXIT_OK if entries else EXIT_UNDELIVERED)


@main.command()
@click.option("--since", metavar="DATE", default=None,
              help="Acknowledged on or after this date (YYYY-MM-DD, or ISO date and time; UTC).")
@click.option("--until", metavar="DATE", default=None,
              help="Acknowledged before the end of this date (or before this ISO time; UTC).")
@click.option("--kind", type=click.Choice(["withdrawals", "deletions", "consent"]), default=None,
              help="withdrawals: consent withdrawals and deletions; deletions; consent: every "
                   "consent change [default: all of them].")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True, help="CSV (the summary goes to stderr) or JSON (with it).")
@common(secrets=False)
def audit(config: Config, since: str | None, until: str | None, kind: str | None,
          fmt: str) -> None:
    """An export of consent withdrawals, consent changes and deletions with each platform's
    acknowledgement time and the lag from the commit, and a summary (count, worst and p95
    lag)."""
    from syncer import audit as trail

    found, summary = trail.audit(config, trail.parse_day(since, "--since"),
                                 trail.parse_day(until, "--until", end=True), kind)
    if fmt == "json":
        click.echo(trail.as_json(found, summary))
    else:
        click.echo(trail.as_csv(found), nl=False)
        click.echo(trail.summary_line(summary), err=True)


@main.group()
def outbox() -> None:
    """The outbox table and triggers in the source database (capture mode "outbox")."""


@outbox.command("install")
@common(secrets=False)
def outbox_install(config: Config) -> None:
    """Create the outbox table and the triggers on the users table (harmless to repeat)."""
    from syncer.capture import outbox_ddl as ob

    click.echo(ob.install(config))


@outbox.command("uninstall")
@common(secrets=False)
def outbox_uninstall(config: Config) -> None:
    """Remove the outbox table and the triggers."""
    from syncer.capture import outbox_ddl as ob

    click.echo(ob.uninstall(config))


@outbox.command("sql")
@click.option("--uninstall", is_flag=True, help="Print the SQL that removes it instead.")
@common(secrets=False)
def outbox_sql(config: Config, uninstall: bool) -> None:
    """Print the SQL for a DBA to run, instead of running it."""
    from syncer.capture import outbox_ddl as ob

    click.echo(ob.sql(config, uninstall=uninstall))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8089, show_default=True, type=int)
@click.option("--error-rate", default=0.0, type=float, help="Share of requests answered 500.")
@click.option("--latency", default=0.0, type=float, help="Seconds added to every answer.")
@common(needs_config=False)
def sandbox(host: str, port: int, error_rate: float, latency: float) -> None:
    """A local stand-in for both APIs, validating requests as documented, to try a config."""
    from syncer.sandbox import Faults, SandboxConfig, serve

    serve(host, port, SandboxConfig(), Faults(error_rate=error_rate, latency_seconds=latency),
          click.echo)


@main.command()
@click.option("--users", default=3000, show_default=True, help="Sample users to create.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the demo's files (app DB, state, config) in this directory.")
@common(needs_config=False, default_level="warning")
def demo(users: int, keep: str | None) -> None:
    """Everything on embedded defaults: a SQLite app DB with sample users and the sandbox."""
    from syncer.demo import run_demo

    sys.exit(run_demo(users=users, keep=keep))


if __name__ == "__main__":  # pragma: no cover
    main()
