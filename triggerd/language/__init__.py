"""The language of rules and configs: a leaf package that depends only on `triggerd.model` and
`triggerd.errors` (and libraries).

- `expr`: the safe `where` language, compiled and evaluated within bounds;
- `globs` and `regex`: linear-time matching (RE2);
- `templates`: `{params.model}`-style substitution of values;
- `schedules`: cron expressions and `every:` intervals, with time zones;
- `units`: durations and sizes.

Config, engine, sources and backends use it; it uses none of them.
"""
