"""The `command` backend's job in bench/chaos.py: record the run, then take a while.

    python _chaos_record.py RUNS_FILE

Appends one JSON line (trigger id, rule, attempt, pid, event ids of the trigger context) to
RUNS_FILE with a single O_APPEND write, so concurrent runs of several replicas never interleave,
then sleeps 0.3-2.3 s (drawn from the trigger id: repeatable), so runs are in flight when a
replica is killed. The record is written first: a run whose daemon dies mid-way still counts.
Standard library only, started with `-I -S` (fast, on a busy machine).
"""

import hashlib
import json
import os
import sys
import time


def main() -> int:
    trigger = os.environ["TRIGGERD_TRIGGER_ID"]
    with open(os.environ["TRIGGERD_TRIGGER_FILE"], encoding="utf-8") as fh:
        ctx = json.load(fh)
    line = json.dumps({"trigger": trigger, "rule": os.environ.get("TRIGGERD_RULE", ""),
                       "attempt": int(os.environ.get("TRIGGERD_ATTEMPT", "0")),
                       "pid": os.getpid(), "at": time.time(),
                       "events": [e["id"] for e in ctx.get("events", [])]}) + "\n"
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    draw = int(hashlib.blake2b(trigger.encode(), digest_size=4).hexdigest(), 16) / 2**32
    time.sleep(0.3 + 2.0 * draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
