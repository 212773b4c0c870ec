"""The Store: every read and write the daemon makes, each one short transaction.

The store is synchronous (SQLAlchemy Core); the daemon calls it from one worker thread so the
event loop never blocks on SQL and a daemon never contends with itself for SQLite's write lock.
Every method is safe to call concurrently from several daemons sharing one PostgreSQL database:
decisions are settled by keys and compare-and-set updates, never by "check then write".

`Store` is assembled from parts, one module each:

- `base.StoreBase`: the database, transactions (`write`, `read`), the pinned SQLite connection
  and the compiled hot-path statements;
- `ingest.IngestStore`: events in (deduplication, pending memberships, streaks, rejects);
- `groups.GroupStore`: rules and groups (state, pending summaries, flags, snapshots, checks and
  slots of scheduled rules);
- `jobs.JobStore`: triggers and jobs (claims, attempts, recovery after a crash);
- `daemons.DaemonStore`: daemons, sources' checkpoints and health, CLI requests, retention.

How SQL runs. The statements on the path from an event to its backend (ingest, a decision's
snapshot, writing a trigger, a claim) are built once and named (`StoreBase._q`, a
`fast.Fast`: on SQLite it runs on sqlite3 directly), and a batch's rows go in through one bulk
insert (`base.sqlite_insert_many` on SQLite; on PostgreSQL `pgbulk`: whole columns as binary
array parameters, one statement per step). Everything off that
path (CLI requests, recovery, retention, start-up) builds its statement where it runs it
(`Connection.execute`). Two modules are free functions over a `Store` rather than parts of it:
`files` and `rejects` (the services sources use, `triggerd.plugin`) and `queries`, the read
model behind the CLI and a `/metrics` scrape.

The names below are re-exported so `triggerd.store.sql` stays the one place to import from.
"""

from __future__ import annotations

from triggerd.store.base import Key, StoreBase, sqlite_value
from triggerd.store.daemons import DaemonStore, retention_cutoff
from triggerd.store.groups import GroupStore, Snapshot
from triggerd.store.ingest import Ingest, IngestResult, IngestStore, tally_pending
from triggerd.store.jobs import MAX_INTERRUPTED, Claim, JobContext, JobStore, NewTrigger

__all__ = ["MAX_INTERRUPTED", "Claim", "Ingest", "IngestResult", "JobContext", "Key",
           "NewTrigger", "Snapshot", "Store", "StoreBase", "retention_cutoff", "sqlite_value",
           "tally_pending"]


class Store(IngestStore, GroupStore, JobStore, DaemonStore):
    """The state store (see the module docstring for its parts)."""
