"""Errors, named by what the caller should do about them.

    SyncerError                         anything syncer raises on purpose
    ├── ConfigError                     bad config or usage: fix the file, exit 2
    ├── SourceError                     the source database failed: retry the pass later
    ├── StateError                      the state database failed: retry the pass later
    ├── StateMissing                    no state yet where the config points (a read-only
    │                                   command found nothing to read): check -c/[state] url
    ├── SafetyValveTripped              too many deletions in one pass: a person decides
    │                                   (``syncer once --confirm``), exit 1
    └── DeliveryError                   a destination did not take a request
        ├── RetriableError              5xx, timeout, dropped connection: back off and try again
        │   └── RateLimited             429: wait ``retry_after`` seconds, then try again
        ├── RejectedError               400: the request carries something the API refuses;
        │   │                           narrow the batch down and quarantine the users that cause it
        │   └── UserUnknown             about one user only (nachocode 404 with a user code):
        │                               quarantine it; never a sign the endpoint refuses all
        ├── HeldBack                    the destination cannot take this kind of request now
        │   │                           (nachocode 403 ERR-AB-ACS-21): keep it pending, report it
        │   └── EndpointRefused         it refuses every request of this kind (a redirect, 405,
        │                               415...): a configuration problem; keep pending, report
        └── CredentialsRejected         401/404 on the keys: stop that destination, exit 3

Foreign exceptions (httpx, SQLAlchemy, psycopg) are translated where they are caught, with
``raise ... from exc``; nothing above a destination or a database port sees them.
Messages name the thing and the fix, and never carry personal data or secrets.
"""

from __future__ import annotations


class SyncerError(Exception):
    """Base of every error syncer raises on purpose."""


class ConfigError(SyncerError):
    """The configuration (or the command line) is wrong. Exit code 2."""

    def __init__(self, problems: list[str] | str, path: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.path = path
        prefix = f"{path}: " if path else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class SourceError(SyncerError):
    """The source database could not be read."""


class StateError(SyncerError):
    """The state database could not be read or written."""


class StateMissing(SyncerError):
    """There is no state where the config points: no pass has run with this config (or the
    config points at the wrong place). Read-only commands say so instead of creating one."""


class SafetyValveTripped(SyncerError):
    """A pass would delete more than the configured share of the known users."""

    def __init__(self, deletions: int, known: int, fraction: float,
                 at_least: bool = False, sent: int = 0) -> None:
        self.deletions = deletions
        self.known = known
        self.fraction = fraction
        share = deletions / known if known else 1.0
        many = f"at least {deletions}" if at_least else str(deletions)
        held = ("no deletion was sent" if not sent else
                f"the pass stopped there ({sent} deletions and withdrawals within the limit "
                "were sent)")
        super().__init__(
            f"safety valve: this pass would delete {many} of {known} known users "
            f"({'at least ' if at_least else ''}{share:.1%}, more than max_delete_fraction = "
            f"{fraction:g}); {held}. "
            "Check the source (a truncated table or a wrong query?); `syncer plan` counts them "
            "all; if the deletions are intended, run `syncer once --confirm`."
        )


class DeliveryError(SyncerError):
    """A destination did not take a request."""


class RetriableError(DeliveryError):
    """Worth trying again after a backoff: 5xx, a timeout, a dropped connection."""


class RateLimited(RetriableError):
    """The destination answered 429; ``retry_after`` is how long it asked us to wait."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RejectedError(DeliveryError):
    """The destination refused the request's content (400)."""


class UserUnknown(RejectedError):
    """The destination answered about this one user (it does not know it): quarantine the user,
    and never count it toward the endpoint refusing every request."""


class HeldBack(DeliveryError):
    """The destination cannot take this kind of request for now; keep it pending."""


class EndpointRefused(HeldBack):
    """The endpoint refuses requests whatever their content (3xx, 405, 415, ...): the base URL or
    method is wrong. Nothing is quarantined; everything stays pending until it is fixed."""


class CredentialsRejected(DeliveryError):
    """The destination refused our keys. Stop sending to it. Exit code 3."""
