"""The exception tree of triggerd.

    TriggerdError                      base of everything raised on purpose
    ├── ConfigError                    a config or rule file is invalid (carries every problem)
    ├── ExpressionError                a `where` expression or template is invalid (with position)
    ├── StoreError                     the state store cannot be used
    │   └── StoreLockedError           another daemon holds the SQLite store
    ├── UnknownRuleError               a CLI command named a rule the config does not have
    └── DispatchError                  a backend could not complete a job
        ├── TransientDispatchError     worth retrying (connection refused, 5xx, timeout, ...)
        └── PermanentDispatchError     never retried (bad request, command not found, ...)

Third-party exceptions are mapped to these at the boundary (`raise ... from exc`) so callers
never need to know which library sits underneath.
"""

from __future__ import annotations


class TriggerdError(Exception):
    """Base class of all errors triggerd raises on purpose."""


class ConfigError(TriggerdError):
    """The configuration is invalid. `problems` holds every message as `file:line: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) if self.problems else "invalid configuration")


class ExpressionError(TriggerdError):
    """An expression or template is invalid; `column` is 1-based within the expression text."""

    def __init__(self, message: str, column: int | None = None) -> None:
        self.message = message
        self.column = column
        where = f" (at column {column})" if column is not None else ""
        super().__init__(f"{message}{where}")


class StoreError(TriggerdError):
    """The state store cannot be opened or used."""


STORE_RETRY_FIRST, STORE_RETRY_MAX = 0.5, 5.0


def store_retry_delay(previous: float) -> float:
    """The wait before using the store again after a `StoreError`, given the previous wait
    (0 after a success): 0.5 s doubling to 5 s. Short on purpose: a PostgreSQL restart or
    failover lasts seconds, every second waited past its end is a second in which nothing is
    stored or dispatched, and a retry costs one connection attempt (a 30 s cap made a
    daemon resume up to half a minute after its store was back)."""
    return min(STORE_RETRY_MAX, max(STORE_RETRY_FIRST, previous * 2))


class StoreLockedError(StoreError):
    """Another daemon already runs on this SQLite store."""


class UnknownRuleError(TriggerdError):
    """A command named a rule that is not in the configuration."""


class DispatchError(TriggerdError):
    """A backend could not complete a job. `detail` is safe to store and show (no secrets)."""

    def __init__(self, detail: str, *, exit_code: int | None = None,
                 external_id: str | None = None) -> None:
        self.detail = detail
        self.exit_code = exit_code
        self.external_id = external_id
        super().__init__(detail)


class TransientDispatchError(DispatchError):
    """The attempt failed for a reason that may pass: retry it under the rule's retry policy.

    `retry_after` (seconds) is the outside system's own hint (HTTP `Retry-After`): the next
    attempt waits at least that long, within the policy's `max_backoff`."""

    def __init__(self, detail: str, *, exit_code: int | None = None,
                 external_id: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail, exit_code=exit_code, external_id=external_id)
        self.retry_after = retry_after


class PermanentDispatchError(DispatchError):
    """The attempt failed for a reason retrying cannot fix: fail the job now."""
