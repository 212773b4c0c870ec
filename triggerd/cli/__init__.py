"""The `triggerd` command. Thin: parse, open the store, print.

Exit codes: 0 success; 1 a query found nothing or the rule is unknown; 2 bad usage or config.
Queries print a table by default and exact JSON with --json; times are ISO 8601 with offset.

Query commands (and the request-writing `fire`, `pause`, `resume`) never change the store's
schema: on a store that is missing, empty or at another revision they exit 2 and say what to
run (`db upgrade`, or start the daemon). Only `run` and `db upgrade` migrate, under a lock
(triggerd.store.migrate). No message shows the store's password (triggerd.store.connect).

The package: `parser` (the argparse definitions), `commands` (what each command does),
`views` (tables and the `--json` shapes); `main` here runs a command and turns the errors it
raises into a message and an exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from triggerd.cli.common import EXIT_NOTHING, EXIT_OK, EXIT_USAGE, UsageError
from triggerd.cli.parser import build_parser
from triggerd.errors import ConfigError, StoreError

__all__ = ["EXIT_NOTHING", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def _report(exc: ConfigError | UsageError | StoreError) -> int:
    """Print what went wrong (never the store's password); the exit code for it."""
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"triggerd: {len(exc.problems)} configuration error(s)", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, UsageError):
        print(f"triggerd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from triggerd.store.connect import redact
    from triggerd.store.migrate import SchemaNotCurrentError

    print(f"triggerd: {redact(str(exc))}", file=sys.stderr)
    # a store not at this schema is a usage problem (run `db upgrade` first), not "nothing
    # found": scripts must not mistake it for an empty answer
    return EXIT_USAGE if isinstance(exc, SchemaNotCurrentError) else EXIT_NOTHING


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, UsageError, StoreError) as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return 130
