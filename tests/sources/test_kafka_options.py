"""The `kafka` source's options and message decoding (no broker needed)."""

from __future__ import annotations

import base64
import json
import re
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from tls_support import KEY_PASSWORD, Pki, make_pki, openssl

from triggerd.clock import SystemClock
from triggerd.errors import StoreError
from triggerd.model import Event
from triggerd.sources import kafka as kafka_source
from triggerd.sources._kafka.decode import Decoder, Record
from triggerd.sources._kafka.options import SecretMissing, SecurityConfigError
from triggerd.sources.kafka import KafkaOptions
from triggerd.store import Store
from triggerd.store.rejects import Reject
from triggerd.store.sql import Ingest

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def options(**kw: object) -> KafkaOptions:
    return KafkaOptions.model_validate({"type": "kafka", "brokers": ["k:9092"], "topic": "m",
                                        **kw})


def record(value: bytes | None, key: bytes | None = b"churn", offset: int = 7) -> Record:
    return Record(topic="m", partition=2, offset=offset, timestamp=1_795_000_000.5, key=key,
                  value=value, headers=[("source", b"batch-job"), ("bin", b"\xff")])


def test_defaults_keep_faust_timers_short_enough_to_consume_within_seconds() -> None:
    o = options()
    assert (o.group, o.format, o.start) == ("triggerd", "json", "latest")
    settings = o.faust_settings()
    # tansu answers a JoinGroup after half the session timeout; faust's default is 60s
    assert settings["broker_session_timeout"] == 6.0
    assert settings["broker_heartbeat_interval"] < settings["broker_session_timeout"]
    assert settings["broker_request_timeout"] >= settings["broker_session_timeout"]
    assert settings["consumer_auto_offset_reset"] == "latest"
    assert options(topic=["a", "b"]).topics == ["a", "b"]


@pytest.mark.parametrize(("security", "message"), [
    ({"protocol": "SASL_PLAINTEXT", "mechanism": "PLAIN", "username": "u",
      "password_env": "P"}, "SASL PLAIN without TLS"),
    ({"protocol": "SASL_SSL", "username": "u", "password_env": "P"}, "needs a `mechanism`"),
    ({"protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512", "username": "u"},
     "`password_env`"),
    ({"protocol": "PLAINTEXT", "username": "u"}, "need a SASL protocol"),
    ({"protocol": "PLAINTEXT", "cafile": "/ca.pem"}, "need TLS"),
    ({"protocol": "SSL", "certfile": "/c.pem"}, "both `certfile` and `keyfile`"),
    ({"protocol": "SSL", "key_password_env": "K"}, "passphrase of `keyfile`"),
    ({"protocol": "SSL", "password": "x"}, "Extra inputs are not permitted"),
])
def test_insecure_or_incomplete_security_is_refused(security: dict[str, str],
                                                    message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        options(security=security)


def test_scram_over_tls_reads_the_password_from_the_environment_only_at_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    o = options(security={"protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512",
                          "username": "svc", "password_env": "KAFKA_PASSWORD"})
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    with pytest.raises(Exception, match="KAFKA_PASSWORD is not set"):
        o.security.credentials()
    monkeypatch.setenv("KAFKA_PASSWORD", "s3cret")
    creds = o.security.credentials()
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == \
        ("svc", "s3cret", "SCRAM-SHA-512", "SASL_SSL")
    assert "s3cret" not in repr(creds)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("brokers", ["kafka-1"], "host:port"),
    ("topic", "bad topic", "invalid topic name"),
    ("subject", "{value.model", "unclosed"),
    ("heartbeat_interval", "20s", "shorter than `session_timeout`"),
    ("format", "avro", "json"),
])
def test_bad_options_are_refused_with_a_specific_message(field: str, value: object,
                                                         message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        options(**{field: value})


def test_a_json_message_becomes_a_message_event_with_the_spec_payload() -> None:
    event = Decoder("metrics", options()).decode(
        record(json.dumps({"metric": "psi", "score": 0.3}).encode()), NOW)
    assert isinstance(event, Event)
    assert (event.kind, event.subject, event.fingerprint) == ("message", "churn", "m/2/7")
    assert event.payload == {
        "value": {"metric": "psi", "score": 0.3}, "key": "churn", "topic": "m",
        "partition": 2, "offset": 7, "timestamp": "2026-11-18T11:06:40.500000+00:00",
        "headers": {"source": "batch-job", "bin": "\\xff"}}


def test_templates_set_subject_and_fingerprint_and_a_missing_field_is_a_reject() -> None:
    d = Decoder("metrics", options(subject="{value.model}", fingerprint="{value.id}"))
    event = d.decode(record(b'{"model": "churn", "id": "r-1"}'), NOW)
    assert isinstance(event, Event)
    assert (event.subject, event.fingerprint) == ("churn", "r-1")
    bad = d.decode(record(b'{"model": "churn"}'), NOW)
    assert isinstance(bad, Reject)
    assert (bad.kind, bad.ref) == ("template", "m/2/7")
    assert "no value for value.id" in bad.error


def test_text_and_bytes_formats_and_a_keyless_subject() -> None:
    text = Decoder("s", options(format="text")).decode(record(b"hello", key=None), NOW)
    assert isinstance(text, Event)
    assert (text.payload["value"], text.subject) == ("hello", "m/2")
    raw = Decoder("s", options(format="bytes")).decode(record(b"\x00\xff"), NOW)
    assert isinstance(raw, Event)
    assert base64.b64decode(raw.payload["value"]) == b"\x00\xff"


@pytest.mark.parametrize(("value", "kind", "error"), [
    (None, "tombstone", "null value"),
    (b"x" * 2000, "too_large", "over max_bytes (1024)"),
    (b"\xc3\x28", "utf8", "not UTF-8"),
    (b'{"score": ', "json", "invalid JSON"),
    (b'{"score": NaN}', "json", "NaN is not valid JSON"),
    (b"[" * 100_000, "json", "invalid JSON"),
])
def test_each_kind_of_bad_message_is_a_reject_with_its_first_bytes(
        value: bytes | None, kind: str, error: str) -> None:
    found = Decoder("metrics", options(max_bytes="1MiB" if kind == "json" else "1KiB")
                    ).decode(record(value), NOW)
    assert isinstance(found, Reject)
    assert (found.source, found.ref, found.kind) == ("metrics", "m/2/7", kind)
    assert error in found.error
    assert found.head is None if value is None else len(found.head or "") <= 200


def test_check_refuses_sasl_plain_without_tls(tmp_path: Path) -> None:
    config = tmp_path / "triggerd.yaml"
    config.write_text(textwrap.dedent("""
        sources:
          metrics:
            type: kafka
            brokers: [kafka-1:9092]
            topic: model-metrics
            security: {protocol: SASL_PLAINTEXT, mechanism: PLAIN, username: svc,
                       password_env: KAFKA_PASSWORD}
    """))
    result = subprocess.run([sys.executable, "-m", "triggerd", "check", "--config", str(config)],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert "triggerd.yaml:3:" in result.stderr or "triggerd.yaml:" in result.stderr
    assert "SASL PLAIN without TLS" in result.stderr


def test_messages_no_store_could_keep_become_storable_events_or_rejects(
        store: Store) -> None:
    """Found in review: a NUL in a key (PostgreSQL text refuses it), a lone surrogate from a
    JSON escape (not UTF-8), a producer timestamp past year 9999 and a 5,000-digit number
    used to kill the stream. Each is now an event the store accepts, or a reject."""
    d = Decoder("metrics", options(fingerprint="{value.id}"))
    nul_key = d.decode(record(b'{"id": "a"}', key=b"\x00\x00\x01\x02"), NOW)
    surrogate = d.decode(record(b'{"id": "\\ud800"}'), NOW)
    far = Record(topic="m", partition=2, offset=9, timestamp=1e15, key=b"k",
                 value=b'{"id": "far"}')
    future = d.decode(far, NOW)
    huge = d.decode(record(b'{"id": "h", "n": ' + b"9" * 5000 + b"}"), NOW)
    assert isinstance(nul_key, Event) and nul_key.subject == "\\x00\\x00\x01\x02"
    assert isinstance(surrogate, Event) and surrogate.fingerprint == "\\ud800"
    assert isinstance(future, Event) and future.payload["timestamp"] is None
    assert isinstance(huge, Reject) and huge.kind == "decode"
    assert "4300" in huge.error or "digits" in huge.error
    events = [nul_key, surrogate, future]
    def classify(evs: Sequence[Event]) -> list[Ingest]:
        return [Ingest(e) for e in evs]

    assert len(store.ingest("metrics", "kafka", events, NOW, classify).new) == 3  # stored
    assert store.ingest("metrics", "kafka", events, NOW, classify).duplicates == 3


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if openssl() is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls(**security: object) -> KafkaOptions:
    return options(security={"protocol": "SSL", **security})


def test_the_tls_context_trusts_only_the_cafile_and_checks_host_names_unless_told(
        pki: Pki) -> None:
    context = tls(cafile=str(pki.ca)).security.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName",
                                                                  "triggerd test ca"),),)]
    relaxed = tls(cafile=str(pki.ca), check_hostname=False).security.ssl_context()
    assert relaxed is not None
    assert relaxed.verify_mode == ssl.CERT_REQUIRED and not relaxed.check_hostname
    assert options().security.ssl_context() is None


def test_an_encrypted_client_key_is_opened_with_the_passphrase_from_its_variable(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    o = tls(cafile=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key),
            key_password_env="KEY_PASS")
    monkeypatch.delenv("KEY_PASS", raising=False)
    with pytest.raises(SecretMissing, match="KEY_PASS is not set"):
        o.security.ssl_context()
    monkeypatch.setenv("KEY_PASS", KEY_PASSWORD)
    assert o.security.ssl_context() is not None
    monkeypatch.setenv("KEY_PASS", "wrong-passphrase")
    with pytest.raises(SecurityConfigError) as caught:
        o.security.ssl_context()
    assert str(caught.value) == (f"cannot decrypt `keyfile` {pki.client_key} with the "
                                 "passphrase in KEY_PASS (wrong passphrase?)")


def test_an_encrypted_key_without_key_password_env_is_an_error_not_a_terminal_prompt(
        pki: Pki) -> None:
    """OpenSSL asks on the terminal for the passphrase of an encrypted key given none: a
    daemon started from a shell hung there, and the event loop with it."""
    o = tls(cafile=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    with pytest.raises(SecurityConfigError, match="is encrypted: name the environment "
                       "variable holding its passphrase in `key_password_env`"):
        o.security.ssl_context()


@pytest.mark.parametrize(("files", "message"), [
    ({"cafile": "{d}/missing.pem"}, "cannot read `cafile` {d}/missing.pem: No such file"),
    ({"cafile": "{stranger_key}"}, "`cafile` {stranger_key} holds no PEM certificate"),
    ({"certfile": "{client_cert}", "keyfile": "{stranger_key}"},
     "`keyfile` {stranger_key} is not the private key of `certfile` {client_cert}"),
    ({"certfile": "{stranger_key}", "keyfile": "{stranger_key}"},
     "must be a PEM certificate and its PEM private key"),
    ({"certfile": "{d}/nope.pem", "keyfile": "{stranger_key}"},
     "cannot read `certfile` {d}/nope.pem or `keyfile`"),
])
def test_unusable_tls_files_name_the_option_to_fix(pki: Pki, files: dict[str, str],
                                                   message: str) -> None:
    names = {"d": str(pki.ca.parent), "stranger_key": str(pki.stranger_key),
             "client_cert": str(pki.client_cert)}
    security = {k: v.format(**names) for k, v in files.items()}
    with pytest.raises(SecurityConfigError, match=re.escape(message.format(**names))):
        tls(**security).security.ssl_context()


def test_credentials_a_kafka_broker_refuses_are_reported_without_the_password() -> None:
    """Apache Kafka answers a wrong SCRAM password with SaslAuthenticationFailed (tansu, the
    test broker, answers differently: see tests/e2e/test_e2e_kafka_security.py)."""
    from aiokafka.errors import SaslAuthenticationFailed

    from triggerd.sources._kafka.app import BrokerRefused, diagnose

    o = options(security={"protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512",
                          "username": "svc", "password_env": "KAFKA_PASSWORD"})
    found = diagnose("kafka-1:9093", "sasl", o.security, SaslAuthenticationFailed(
        "Authentication failed during authentication due to invalid credentials with SASL "
        "mechanism SCRAM-SHA-512"), 30.0)
    assert isinstance(found, BrokerRefused)
    assert str(found) == ("SASL: kafka-1:9093 refused SCRAM-SHA-512 authentication as 'svc': "
                          "check `username` and the password in environment variable "
                          "KAFKA_PASSWORD")


class _StoreDown:
    """A SourceContext whose store refuses the first `outages` emits (a PostgreSQL restart)."""

    def __init__(self, outages: int) -> None:
        self.name = "metrics"
        self.clock = SystemClock()
        self.outages = outages
        self.emitted: list[Event] = []
        self.health: list[bool] = []

    async def emit(self, events: Sequence[Event], also: object = None) -> None:
        if self.outages:
            self.outages -= 1
            raise StoreError("connection refused (simulated)")
        self.emitted.extend(events)

    def set_health(self, healthy: bool, error: str | None = None) -> None:
        self.health.append(healthy)


async def test_a_store_outage_holds_the_batch_and_retries_at_most_5s_apart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch the store refuses is kept (not acknowledged, not dropped) and offered again,
    0.5 s after the first refusal, doubling to 5 s, never 30: after a long outage the source
    resumes within 5 s of the store's return. Unhealthy meanwhile, healthy after."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the waits, not the time
        waits.append(seconds)

    monkeypatch.setattr(kafka_source.asyncio, "sleep", sleep)
    source = kafka_source.KafkaSource("metrics", options())
    ctx = _StoreDown(outages=8)
    decoded = [Decoder("metrics", options()).decode(record(b'{"churn": 0.1}', offset=n), NOW)
               for n in range(3)]
    events = [e for e in decoded if isinstance(e, Event)]
    assert len(events) == 3
    await source._durably(ctx, [], events, [])  # type: ignore[arg-type]
    assert ctx.emitted == events
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert ctx.health == [False] * 8 + [True]
