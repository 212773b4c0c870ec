"""Generate the reference pages from the code, so that they cannot drift from it.

- docs/reference/config.md: every key of the config file, from its JSON Schema (`triggerd
  schema`): per section and per source and backend type, each key's type, default and
  description (a config model's field docstring).
- docs/reference/cli.md: every command's usage and options, from the parser (`triggerd
  COMMAND --help`), formatted at 100 columns.

    .venv/bin/python docs/gen_refs.py           # write both
    .venv/bin/python docs/gen_refs.py --check   # exit 1 if either is stale (the tests run it)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
PAGES = {"config": DOCS / "reference" / "config.md", "cli": DOCS / "reference" / "cli.md"}
SECTIONS = {"RuleSpec": "rules.NAME", "MatchSpec": "rules.NAME.match",
            "WhenSpec": "rules.NAME.when", "DispatchSpec": "rules.NAME.dispatch",
            "RetrySpec": "rules.NAME.dispatch.retry", "IncludeSpec": "include[]"}


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "anyOf" in prop:
        return " \\| ".join(_type(p) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of {_type(prop['additionalProperties'])}"
    return str(kind)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(model: dict[str, Any]) -> list[str]:
    required = set(model.get("required", ()))
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, prop in model.get("properties", {}).items():
        default = "required" if key in required else (
            f"`{json.dumps(prop['default'])}`" if "default" in prop else "")
        rows.append(f"| `{key}` | {_type(prop)} | {default} | "
                    f"{_cell(prop.get('description', ''))} |")
    return rows


def config_page() -> str:
    from triggerd.config.schema import json_schema

    schema = json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    out = ["# Configuration reference", "",
           "Generated from the config's JSON Schema (`triggerd schema`) by `docs/gen_refs.py`;",
           "a test fails when it is stale. Durations are written `30s`, `10m`, `2h`, `7d`;",
           "sizes `512KiB`, `10MiB`. Each entry of `sources` and `backends` is one of the",
           "`type:` sections below.", "", "## The file", "", *_table(schema), ""]
    for name, section in SECTIONS.items():
        if name in defs:
            out += [f"## `{section}`", "", *_table(defs[name]), ""]
    plugins = sorted(((m.get("properties", {}).get("type", {}).get("const", ""), n)
                      for n, m in defs.items() if n not in SECTIONS),
                     key=lambda tn: (tn[0] == "", tn))  # the types first, then their parts
    for type_name, name in plugins:  # sources and backends by type, then their parts
        model = defs[name]
        title = f"## `type: {type_name}`" if type_name else f"## {name}"
        described = model.get("description", "")
        out += [title, "", *([_cell(described), ""] if described else []),
                *_table(model), ""]
    return "\n".join(out).rstrip() + "\n"


def cli_page() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width
    from triggerd.cli.parser import build_parser

    parser = build_parser()
    out = ["# Command-line reference", "",
           "Generated from the parser (`triggerd COMMAND --help`) by `docs/gen_refs.py`; a test",
           "fails when it is stale.", "", "```text", parser.format_help().rstrip(), "```", ""]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        out += [f"## `triggerd {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in (("config", config_page()), ("cli", cli_page())):
        path = PAGES[name]
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(DOCS.parent)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run: python docs/gen_refs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
