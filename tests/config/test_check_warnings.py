"""`triggerd check` passes a config whose secret variables this environment does not hold (a
CI runner checking a production config has none of them), and says which it would need: the
daemon reads them at start, where a missing one stops it (or leaves a source unhealthy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from triggerd.cli import main

CONFIG = """
state_dir: state
sources:
  m: {type: kafka, brokers: ["k:9092"], topic: t, group: g,
      security: {protocol: SASL_SSL, mechanism: SCRAM-SHA-512, username: u,
                 password_env: KAFKA_PW}}
backends:
  h: {type: http, url: "https://ci.internal/hook", secret_env: HOOK_SECRET,
      headers: {Authorization: {env: CI_TOKEN, prefix: "Bearer "}}}
rules:
  r: {on: [m], dispatch: {backend: h}}
"""


def test_check_names_each_secret_variable_this_environment_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "triggerd.yaml"
    path.write_text(CONFIG)
    for name in ("KAFKA_PW", "KAFKA_PW_FILE", "HOOK_SECRET", "HOOK_SECRET_FILE",
                 "CI_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CI_TOKEN", "t0ken")
    monkeypatch.setenv("HOOK_SECRET_FILE", str(tmp_path / "hook.secret"))
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("ok: 1 source(s), 1 backend(s), 1 rule(s)")
    assert out.err.splitlines() == [
        "warning: sources.m.security.password_env: environment variable KAFKA_PW is not set "
        "here (nor KAFKA_PW_FILE): the daemon needs it where it runs"]
    monkeypatch.setenv("KAFKA_PW", "pw")
    assert main(["check", "--config", str(path)]) == 0
    assert capsys.readouterr().err == ""
