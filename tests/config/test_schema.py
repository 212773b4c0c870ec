"""`json_schema()` and `triggerd schema`: the config's JSON Schema, for editors.

`jsonschema` is not installed in this environment, so the schema is checked structurally (every
keyword known and well typed, every `$ref` resolvable, every pattern a valid regex) and then
used by a small validator for the keywords it contains, to show it accepts the files the
loader accepts and refuses typical mistakes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from triggerd import registry
from triggerd.config.loader import load_config
from triggerd.config.schema import RetrySpec, json_schema
from triggerd.config.yamlsafe import BoundedLoader
from triggerd.language.units import DURATION_PATTERN, parse_duration, parse_size

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "triggerd.example.yaml"
JSON_TYPES = {"string", "integer", "number", "boolean", "null", "object", "array"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json_schema()


def resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = root
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    assert isinstance(node, dict)
    return node


def deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    return resolve(root, node["$ref"]) if "$ref" in node else node


def check_schema(node: Any, root: dict[str, Any], where: str = "#") -> None:
    """Fail unless `node` is a well-formed schema using only keywords known here."""
    assert isinstance(node, dict | bool), f"{where}: a schema is an object or a boolean"
    if isinstance(node, bool):
        return
    for key, value in node.items():
        at = f"{where}/{key}"
        if key == "$ref":
            resolve(root, value)
        elif key == "type":
            types = value if isinstance(value, list) else [value]
            assert set(types) <= JSON_TYPES, at
        elif key in ("properties", "$defs"):
            assert isinstance(value, dict), at
            for name, sub in value.items():
                check_schema(sub, root, f"{at}/{name}")
        elif key in ("additionalProperties", "items", "propertyNames"):
            check_schema(value, root, at)
        elif key in ("anyOf", "oneOf", "allOf"):
            assert isinstance(value, list) and value, at
            for i, sub in enumerate(value):
                check_schema(sub, root, f"{at}/{i}")
        elif key == "required":
            assert isinstance(value, list) and len(set(value)) == len(value), at
            assert set(value) <= set(node.get("properties", {})), at
        elif key == "enum":
            assert isinstance(value, list) and value, at
        elif key == "pattern":
            assert isinstance(value, str), at
            re.compile(value)
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(value, int | float) and not isinstance(value, bool), at
        elif key in ("minItems", "maxItems", "minLength", "maxLength"):
            assert isinstance(value, int) and value >= 0, at
        elif key in ("title", "description"):
            assert isinstance(value, str), at
        elif key in ("default", "const"):
            json.dumps(value)
        else:
            pytest.fail(f"{at}: unknown JSON Schema keyword")


def _is_type(value: Any, name: str) -> bool:
    return {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }[name]


def errors(value: Any, node: Any, root: dict[str, Any], at: str = "$") -> list[str]:
    """What is wrong with `value` under `node`, for the keywords `check_schema` allows."""
    if node is True:
        return []
    if node is False:
        return [f"{at}: not allowed"]
    if "$ref" in node:
        return errors(value, resolve(root, node["$ref"]), root, at)
    found: list[str] = []
    if "type" in node and not _is_type(value, node["type"]):
        return [f"{at}: not of type {node['type']}"]
    if "const" in node and value != node["const"]:
        found.append(f"{at}: not {node['const']!r}")
    if "enum" in node and value not in node["enum"]:
        found.append(f"{at}: not one of {node['enum']}")
    if "pattern" in node and isinstance(value, str) and not re.search(node["pattern"], value):
        found.append(f"{at}: does not match {node['pattern']}")
    if "minimum" in node and _is_type(value, "number") and value < node["minimum"]:
        found.append(f"{at}: below {node['minimum']}")
    if "maximum" in node and _is_type(value, "number") and value > node["maximum"]:
        found.append(f"{at}: above {node['maximum']}")
    if "anyOf" in node and all(errors(value, s, root, at) for s in node["anyOf"]):
        found.append(f"{at}: matches none of anyOf")
    if "oneOf" in node and sum(not errors(value, s, root, at) for s in node["oneOf"]) != 1:
        found.append(f"{at}: does not match exactly one of oneOf")
    if isinstance(value, dict):
        props = node.get("properties", {})
        found += [f"{at}: missing {key!r}" for key in node.get("required", [])
                  if key not in value]
        for key, sub in value.items():
            if key in props:
                found += errors(sub, props[key], root, f"{at}.{key}")
            else:
                found += errors(sub, node.get("additionalProperties", True), root, f"{at}.{key}")
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0):
            found.append(f"{at}: fewer than {node['minItems']} items")
        for i, item in enumerate(value):
            found += errors(item, node.get("items", True), root, f"{at}[{i}]")
    return found


def read_yaml(text: str) -> Any:
    """YAML as the loader reads it (YAML 1.2 booleans: `on:` stays a string key)."""
    return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader


def duration_schemas(node: Any, at: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every property schema that is, or may be, a duration: (where, the property schema)."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("pattern") == DURATION_PATTERN or any(
                isinstance(s, dict) and s.get("pattern") == DURATION_PATTERN
                for s in node.get("anyOf", [])):
            out.append((at, node))
        for key, value in node.items():
            if isinstance(value, dict):
                out += duration_schemas(value, f"{at}/{key}")
            elif isinstance(value, list):
                for i, sub in enumerate(value):
                    out += duration_schemas(sub, f"{at}/{key}/{i}")
    return out


# -- shape -----------------------------------------------------------------------------------
def test_the_schema_is_well_formed_json_schema(schema: dict[str, Any]) -> None:
    assert json.loads(json.dumps(schema)) == schema
    check_schema(schema, schema)
    assert schema["type"] == "object"
    assert schema["title"] == "triggerd configuration"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"store", "state_dir", "retention", "include",
                                         "sources", "backends", "rules"}


def test_the_validator_here_is_strict_enough_to_trust(schema: dict[str, Any]) -> None:
    """Self-check of `errors`: it refuses what it must, so a pass below means something."""
    assert errors({"store": 1}, schema, schema)
    assert errors({"colour": "red"}, schema, schema)
    assert errors({"retention": "30"}, schema, schema)
    assert not errors({"retention": "30d", "include": ["rules.d/*.yaml"]}, schema, schema)


def test_every_registered_plugin_type_has_its_options(schema: dict[str, Any]) -> None:
    for section, types in (("sources", registry.source_types()),
                           ("backends", registry.backend_types())):
        variants = schema["properties"][section]["additionalProperties"]["oneOf"]
        consts = {deref(schema, v)["properties"]["type"]["const"] for v in variants}
        assert consts == set(types)
    assert "SourceEntry" not in schema["$defs"]
    assert "BackendEntry" not in schema["$defs"]


def test_cron_options_are_in_the_schema(schema: dict[str, Any]) -> None:
    cron = schema["$defs"]["CronOptions"]
    assert cron["additionalProperties"] is False
    assert cron["required"] == ["type"]
    props = cron["properties"]
    assert set(props) == {"type", "schedule", "every", "timezone", "catch_up", "max_catch_up"}
    assert props["type"]["const"] == "cron"
    assert props["catch_up"]["enum"] == ["none", "last", "all"]
    assert props["catch_up"]["default"] == "last"
    assert props["max_catch_up"]["minimum"] == 1
    assert props["timezone"]["default"] == "UTC"
    assert ("#/$defs/CronOptions/properties/every", props["every"]) in duration_schemas(
        schema)


def test_command_options_are_in_the_schema(schema: dict[str, Any]) -> None:
    command = schema["$defs"]["CommandOptions"]
    assert command["additionalProperties"] is False
    assert set(command["required"]) == {"type", "argv"}
    props = command["properties"]
    assert props["type"]["const"] == "command"
    assert props["argv"]["type"] == "array"
    assert props["argv"]["items"] == {"type": "string"}
    assert props["argv"]["minItems"] == 1
    assert props["env"]["additionalProperties"] == {"type": "string"}
    assert props["inherit_env"]["type"] == "boolean"
    assert props["kill_grace"]["default"] == "10s"
    assert {"workdir", "timeout", "output_limit", "tail", "success_codes"} <= set(props)


def test_rules_when_match_and_dispatch_keys(schema: dict[str, Any]) -> None:
    rule = deref(schema, schema["properties"]["rules"]["additionalProperties"])
    assert rule["additionalProperties"] is False
    assert set(rule["required"]) == {"on", "dispatch"}
    assert set(rule["properties"]) == {"on", "match", "group_by", "when", "dispatch",
                                       "description"}
    assert rule["properties"]["on"]["minItems"] == 1
    when = deref(schema, rule["properties"]["when"])
    assert when["additionalProperties"] is False
    assert set(when["properties"]) == {"min_events", "min_bytes", "debounce", "max_delay",
                                       "cooldown", "schedule", "at_least_every", "sustained"}
    assert when["properties"]["min_events"]["minimum"] == 1
    match = deref(schema, rule["properties"]["match"])
    assert set(match["properties"]) == {"kinds", "subject", "where"}
    kinds = match["properties"]["kinds"]["anyOf"][0]["items"]["enum"]
    assert set(kinds) == {"created", "modified", "moved", "deleted", "message", "tick",
                          "manual"}
    dispatch = deref(schema, rule["properties"]["dispatch"])
    assert dispatch["required"] == ["backend"]
    assert dispatch["properties"]["on_busy"]["enum"] == ["coalesce", "queue", "skip"]
    retry = deref(schema, dispatch["properties"]["retry"])
    assert (retry["properties"]["attempts"]["minimum"],
            retry["properties"]["attempts"]["maximum"]) == (1, 100)


# -- durations and sizes ---------------------------------------------------------------------
def test_durations_are_strings_with_a_pattern(schema: dict[str, Any]) -> None:
    found = dict(duration_schemas(schema))
    defs = "#/$defs"
    for where in ("#/properties/retention",
                  *(f"{defs}/WhenSpec/properties/{k}" for k in
                    ("debounce", "max_delay", "cooldown", "at_least_every", "sustained")),
                  f"{defs}/RetrySpec/properties/backoff",
                  f"{defs}/RetrySpec/properties/max_backoff",
                  f"{defs}/CronOptions/properties/every",
                  f"{defs}/CommandOptions/properties/timeout",
                  f"{defs}/CommandOptions/properties/kill_grace"):
        assert where in found, where
    for where, node in found.items():
        variants = [node] if "pattern" in node else node["anyOf"]
        for sub in variants:
            if sub.get("pattern") == DURATION_PATTERN:
                assert sub["type"] == "string", where
        assert node.get("description") or any(s.get("description") for s in variants), where


@pytest.mark.parametrize(("text", "ok"), [
    ("500ms", True), ("30s", True), ("2m", True), ("6h", True), ("7d", True), ("1w", True),
    ("1.5h", True), ("2 minutes", False), ("PT30S", False), ("30", False), ("", False),
    ("-5m", False),
])
def test_the_duration_pattern_agrees_with_the_parser(text: str, ok: bool) -> None:
    assert bool(re.search(DURATION_PATTERN, text)) is ok
    if ok:
        assert parse_duration(text) > timedelta(0)
    else:
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(text)


def test_duration_defaults_are_written_as_users_write_them(schema: dict[str, Any]) -> None:
    defaults = {where: node["default"] for where, node in duration_schemas(schema)
                if node.get("default") is not None}
    assert defaults == {
        "#/properties/retention": "30d",
        "#/$defs/RetrySpec/properties/backoff": "30s",
        "#/$defs/RetrySpec/properties/max_backoff": "1h",
        "#/$defs/CommandOptions/properties/kill_grace": "10s",
        "#/$defs/HttpOptions/properties/connect_timeout": "10s",
        "#/$defs/HttpOptions/properties/read_timeout": "30s",
        "#/$defs/HttpOptions/properties/timeout": "1m",
        "#/$defs/KubernetesOptions/properties/poll": "5s",
        "#/$defs/KubernetesOptions/properties/request_timeout": "30s",
        "#/$defs/AirflowOptions/properties/poll_interval": "5s",
        "#/$defs/AirflowOptions/properties/request_timeout": "30s",
        "#/$defs/FilesystemOptions/properties/settle": "5s",
        "#/$defs/FilesystemOptions/properties/rescan": "10m",
        "#/$defs/FilesystemOptions/properties/poll": False,  # false, or an interval
        "#/$defs/KafkaOptions/properties/batch_wait": "50ms",
        "#/$defs/KafkaOptions/properties/fetch_wait": "100ms",
        "#/$defs/KafkaOptions/properties/session_timeout": "6s",
        "#/$defs/KafkaOptions/properties/heartbeat_interval": "2s",
        "#/$defs/KafkaOptions/properties/rebalance_timeout": "20s",
        "#/$defs/KafkaOptions/properties/request_timeout": "30s",
        "#/$defs/KafkaOptions/properties/commit_interval": "1s",
    }
    for value in defaults.values():
        assert value is False or re.search(DURATION_PATTERN, value)
    assert parse_duration(defaults["#/$defs/RetrySpec/properties/backoff"]) == \
        RetrySpec().backoff


def test_sizes_are_an_integer_or_a_string_with_a_pattern(schema: dict[str, Any]) -> None:
    min_bytes = schema["$defs"]["WhenSpec"]["properties"]["min_bytes"]
    size = min_bytes["anyOf"][0]
    assert {"type": "integer", "minimum": 0} in size["anyOf"]
    pattern = next(s["pattern"] for s in size["anyOf"] if s.get("type") == "string")
    for text in ("512KiB", "1GiB", "10MB", "100"):
        assert re.search(pattern, text), text
        parse_size(text)
    assert not re.search(pattern, "lots")


# -- the schema and the loader agree ---------------------------------------------------------
RICH = """
retention: 14d
sources:
  nightly: {type: cron, schedule: "0 2 * * *", timezone: Europe/Berlin, catch_up: all}
  hourly: {type: cron, every: 1h, catch_up: none, max_catch_up: 3}
backends:
  train:
    type: command
    argv: [python, -m, train, "{params.model}"]
    env: {TOKEN: "${TOKEN}"}
    timeout: 2h
    output_limit: 1MiB
rules:
  churn:
    on: [hourly]
    match: {kinds: [tick], subject: "hourly", where: "kind == 'tick'"}
    group_by: "{source}"
    when: {min_events: 2, min_bytes: 1GiB, debounce: 2m, max_delay: 1h, cooldown: 6h,
           at_least_every: 7d, schedule: nightly}
    dispatch:
      backend: train
      params: {model: churn, full: yes}
      on_busy: queue
      retry: {attempts: 3, backoff: 1m, max_backoff: 30m}
  churn-sustained:
    on: [nightly]
    when: {sustained: 15m}
    dispatch: {backend: train}
"""


def test_files_the_loader_accepts_are_valid_under_the_schema(
        schema: dict[str, Any], tmp_path: Path) -> None:
    rich = tmp_path / "triggerd.yaml"
    rich.write_text(RICH)
    for path in (EXAMPLE, rich):
        load_config(path, {"TOKEN": "t"})
        assert errors(read_yaml(path.read_text()), schema, schema) == [], path


@pytest.mark.parametrize(("mistake", "where"), [
    ("rules:\n  r: {on: [n], dispatch: {backend: b}, trigger: 1}\n", "$.rules.r"),
    ("rules:\n  r: {on: [n], dispatch: {backend: b}, when: {debounce: 2 minutes}}\n",
     "$.rules.r.when.debounce"),
    ("rules:\n  r: {on: [n], dispatch: {backend: b}, when: {min_events: 0}}\n",
     "$.rules.r.when.min_events"),
    ("rules:\n  r: {on: [n], dispatch: {backend: b, on_busy: drop}}\n",
     "$.rules.r.dispatch.on_busy"),
    ("rules:\n  r: {on: [n]}\n", "$.rules.r"),
    ("sources:\n  n: {type: cron, every: 1h, catch_up: sometimes}\n", "$.sources.n"),
    ("sources:\n  n: {type: filesystem, paths: [/data], settle: soon}\n", "$.sources.n"),
    ("sources:\n  n: {type: carrier-pigeon}\n", "$.sources.n"),
    ("backends:\n  b: {type: command}\n", "$.backends.b"),
    ("backends:\n  b: {type: command, argv: [x], shell: true}\n", "$.backends.b"),
    ("colour: red\n", "$.colour"),
])
def test_typical_mistakes_are_refused_by_the_schema_too(
        schema: dict[str, Any], mistake: str, where: str) -> None:
    found = errors(read_yaml(mistake), schema, schema)
    assert found
    assert any(e.startswith(where) for e in found), found


# -- `triggerd schema` -----------------------------------------------------------------------
def test_triggerd_schema_prints_the_schema_as_json(tmp_path: Path,
                                                   schema: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")}
    result = subprocess.run([sys.executable, "-m", "triggerd", "schema"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == schema
