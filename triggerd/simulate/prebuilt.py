"""The events of a replay's arrivals, built once for all the variants that share them.

A `triggerd replay` runs several variants (the current config, candidates, the points of a
`--sweep`) over one arrivals log. The events of the arrivals depend on the sources (their
options and what they remember: known files, offsets), never on the rules: so they are built
once per set of sources (`Prebuilt.prepared`), by the sources' own code (`inputs.Builder`, in
the order the simulator takes its inputs: by time, rows at one time as written), and every
variant whose `sources` are equal replays the same `Built` inputs. A filesystem source's rows
go to the builder as their fields (`history.entries`), without a pydantic input each.

What is shared is never written by a simulation: `Built`, `Named` and `Event` are frozen,
and neither the engine nor the stores write an event's payload (tests/simulate/
test_prebuilt.py: a variant replayed after others gets what it gets alone, and the events are
left as they were built).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from triggerd.config.loader import Config
from triggerd.simulate.history import Arrival, Inputs, entries
from triggerd.simulate.inputs import Builder, Built


@dataclass(frozen=True)
class Prepared:
    """A config's replayed arrivals as built inputs, by time, and what was left out (by
    reason; `history.timeline_inputs`'s)."""

    items: tuple[tuple[datetime, Built], ...]
    left_out: dict[str, int]


def prepare(config: Config, arrivals: list[Arrival], start: datetime) -> Prepared:
    """The events of `arrivals` as the sources of `config` make them (see the module
    docstring)."""
    skipped = Inputs()
    builder = Builder(config.sources, start, datetime.isoformat)
    items = []
    for a, entry in sorted(entries(config, arrivals, skipped), key=lambda x: x[0].at):
        if isinstance(entry, str):  # a file: its path
            source = a.source
            named = builder.files_of(source, entry, a.kind, a.size, a.fingerprint, None, a.at)
        else:
            source, named = builder.build(entry, a.at)
        items.append((a.at, Built(source, tuple(named))))
    return Prepared(tuple(items), dict(skipped.left_out))


class Prebuilt:
    """One replay's arrivals, and their events per set of sources, built when a variant
    first asks (`prepared`)."""

    def __init__(self, arrivals: list[Arrival], start: datetime) -> None:
        self.arrivals = arrivals
        self.start = start
        self._done: list[tuple[Config, Prepared]] = []

    def prepared(self, config: Config) -> Prepared:
        """The built inputs for `config`: those of an earlier config with equal sources."""
        for other, done in self._done:
            if other.sources == config.sources:
                return done
        done = prepare(config, self.arrivals, self.start)
        self._done.append((config, done))
        return done
