"""Unit tests for rules (`triggerd test`), and the timeline driver under them.

The real engine (`triggerd.engine.Engine`: no second model of the policy) runs over a fresh
in-memory store with a manual clock, fed a timeline of inputs whose events the sources' own
code builds; the clock jumps from one due moment to the next, so days of policy take
milliseconds. Modules: `spec` (the test file's shape), `testfile` (loading it, `file:line`
errors), `inputs` (events of inputs), `simstore` (what a simulation needs of its store),
`memstore` (the SQL store on in-memory SQLite: `triggerd test`), `dictstore` (a store in
dicts: `triggerd replay`), `jobs` (claims and outcomes), `driver` (the simulation),
`lookahead` (the replay's fast lane), `check` (expected against got), `runner` (a file's
tests), `report` (text and JSON), `history`, `replay` and `replay_*` (`triggerd replay`).

Layer: beside the runtime (it may import engine, dispatcher, config, store, language, model,
errors), never the CLI; and the built-in sources' pure event-building code.
"""
