"""Options of a `type: kafka` source, and the TLS/SASL settings they turn into.

Secrets come only from environment variables named in the config (`password_env`,
`key_password_env`); they are read when the source starts, never echoed in errors or logs.
SASL PLAIN sends the password in clear text, so PLAIN without TLS (`SASL_PLAINTEXT` with
`mechanism: PLAIN`) is refused by `triggerd check`.

A TLS file that cannot be used (missing, not PEM, an encrypted key without its passphrase or
with a wrong one, a key that is not the certificate's) is a `SecurityConfigError` whose
message names the option to fix. OpenSSL is never left to ask for a key passphrase on the
terminal (it would block the daemon): the passphrase comes from `key_password_env` or not at
all.
"""

from __future__ import annotations

import os
import re
import ssl
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from triggerd.plugin import Duration, ExpressionError, Size, Strict, Template, TriggerdError

__all__ = ["KafkaOptions", "KafkaSecurity", "SecretMissing", "SecurityConfigError"]

_BROKER = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")


class SecretMissing(TriggerdError):
    """An environment variable named by `*_env` is not set at start."""


class SecurityConfigError(TriggerdError):
    """A TLS file named in `security` cannot be used; the message says which and why (and
    never holds a secret)."""


class _KeyEncrypted(Exception):
    """OpenSSL asked for the passphrase of a key that has no `key_password_env`."""


class KafkaSecurity(Strict):
    """How to reach the brokers: `PLAINTEXT`, `SSL` (TLS, optionally with a client
    certificate), `SASL_SSL` (PLAIN or SCRAM over TLS) or `SASL_PLAINTEXT` (SCRAM only)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """PLAINTEXT, SSL (TLS), SASL_SSL (SASL over TLS) or SASL_PLAINTEXT (SCRAM only)."""
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """The SASL mechanism (with a SASL protocol)."""
    username: str | None = None
    """The SASL user."""
    password_env: str | None = None
    """The environment variable holding the SASL password."""
    cafile: str | None = None
    """CA bundle to verify the brokers (default: the system's)."""
    certfile: str | None = None
    """TLS client certificate (PEM), for brokers that authenticate clients by certificate."""
    keyfile: str | None = None
    """The client certificate's private key (PEM), with `certfile`."""
    key_password_env: str | None = None
    """The environment variable holding the key file's password, if it has one."""
    check_hostname: bool = True
    """Check that the broker's certificate names the host connected to."""

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl = self.protocol.startswith("SASL_")
        tls = self.protocol in ("SSL", "SASL_SSL")
        if sasl:
            if self.mechanism is None:
                raise ValueError(f"protocol {self.protocol} needs a `mechanism` "
                                 "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
            if not self.username or not self.password_env:
                raise ValueError(f"protocol {self.protocol} needs `username` and "
                                 "`password_env` (the variable holding the password)")
            if self.mechanism == "PLAIN" and not tls:
                raise ValueError("SASL PLAIN without TLS sends the password in clear text: "
                                 "use protocol SASL_SSL, or a SCRAM mechanism")
        elif self.mechanism or self.username or self.password_env:
            raise ValueError(f"`mechanism`, `username` and `password_env` need a SASL protocol "
                             f"(SASL_SSL), not {self.protocol}")
        if not tls and (self.cafile or self.certfile or self.keyfile):
            raise ValueError(f"`cafile`, `certfile` and `keyfile` need TLS (protocol SSL or "
                             f"SASL_SSL), not {self.protocol}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("a TLS client certificate needs both `certfile` and `keyfile`")
        if self.key_password_env and not self.keyfile:
            raise ValueError("`key_password_env` is the passphrase of `keyfile`: set `keyfile`")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None without TLS): verifies the brokers against `cafile`
        (or the system's CAs), checks their host name unless `check_hostname: false`, and
        presents `certfile` when set. Reads the files (and the key passphrase) now."""
        if self.protocol not in ("SSL", "SASL_SSL"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.cafile)
        except ssl.SSLError as exc:
            raise SecurityConfigError(f"`cafile` {self.cafile} holds no PEM certificate "
                                      f"({exc.reason or exc})") from None
        except OSError as exc:
            raise SecurityConfigError(f"cannot read `cafile` {self.cafile}: "
                                      f"{exc.strerror or exc}") from None
        context.check_hostname = self.check_hostname
        if self.certfile and self.keyfile:
            _load_client_certificate(context, self.certfile, self.keyfile,
                                     self.key_password_env)
        return context

    def credentials(self, context: ssl.SSLContext | None = None) -> Any:
        """The faust credentials object (None for PLAINTEXT). Reads the secrets now.
        `context` is the one `ssl_context()` made (made here if not given)."""
        # from faust.auth, not `faust.X`: faust's lazy top-level names are not thread-safe
        from faust.auth import SASLCredentials, SSLCredentials

        if context is None:
            context = self.ssl_context()
        if self.protocol.startswith("SASL_"):
            return SASLCredentials(username=self.username, password=_secret(self.password_env),
                                   ssl_context=context, mechanism=self.mechanism)
        if context is not None:
            return SSLCredentials(context)
        return None


def _load_client_certificate(context: ssl.SSLContext, certfile: str, keyfile: str,
                             password_env: str | None) -> None:
    asked = False

    def passphrase() -> str:
        nonlocal asked
        asked = True
        if password_env is None:
            raise _KeyEncrypted
        return _secret(password_env) or ""

    try:
        context.load_cert_chain(certfile, keyfile, password=passphrase)
    except _KeyEncrypted:
        raise SecurityConfigError(
            f"`keyfile` {keyfile} is encrypted: name the environment variable holding its "
            "passphrase in `key_password_env`") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise SecurityConfigError(f"`keyfile` {keyfile} is not the private key of "
                                      f"`certfile` {certfile}") from None
        if asked:
            raise SecurityConfigError(
                f"cannot decrypt `keyfile` {keyfile} with the passphrase in {password_env} "
                "(wrong passphrase?)") from None
        raise SecurityConfigError(
            f"`certfile` {certfile} and `keyfile` {keyfile} must be a PEM certificate and its "
            f"PEM private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise SecurityConfigError(f"cannot read `certfile` {certfile} or `keyfile` {keyfile}: "
                                  f"{exc.strerror or exc}") from None


def _secret(env: str | None) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None:
        raise SecretMissing(f"environment variable {env} is not set")
    return value


def _seconds(td: timedelta) -> float:
    return td.total_seconds()


NOTIFICATIONS = ("s3", "gcs", "eventgrid")  # formats whose messages are object-store news


class KafkaOptions(Strict):
    """Options of a `type: kafka` source."""

    type: Literal["kafka"]
    """Messages on Kafka topics become `message` events (offsets committed once stored)."""
    brokers: list[str] = Field(min_length=1)
    """Bootstrap brokers as host:port."""
    topic: str | list[str]
    """A topic, or a list of topics."""
    group: str = "triggerd"
    """Consumer group: daemons in one group share the partitions."""
    format: Literal["json", "text", "bytes", "s3", "gcs", "eventgrid"] = "json"
    """json | text | bytes: the value as it is; s3 | gcs | eventgrid: object-store
    notifications (S3 event notifications, GCS Pub/Sub, Azure Event Grid) read as the
    events of the bucket source `bucket` names."""
    bucket: str | None = None
    """With a notification format: the `type: bucket` source these notifications are about.
    Their events are that source's, with the fingerprints its listing gives, so push and scan
    deduplicate against each other."""
    subject: str | None = None
    """Template for the event subject; default the message key."""
    fingerprint: str | None = None
    """Template for the dedup key; default `topic/partition/offset`."""
    start: Literal["earliest", "latest"] = "latest"
    """Where a new group starts reading (a known group resumes from its committed offset)."""
    max_bytes: Size = 1 << 20
    """Messages larger than this are rejected (counted and recorded, not decoded)."""
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    """TLS and SASL: protocol, mechanism, username, password_env, cafile, certfile, keyfile."""
    batch: int = Field(500, ge=1, le=100_000)
    """At most this many messages are stored in one transaction."""
    batch_wait: Duration = timedelta(milliseconds=50)
    """How long a partial batch waits for more messages before it is stored, counted from
    the previous batch (a message after a quiet spell is stored at once)."""
    fetch_wait: Duration = timedelta(milliseconds=100)
    """How long the broker may hold a fetch while no message is there (faust fixes 1.5s;
    some brokers hold it that long even when a message arrives: idle latency)."""
    session_timeout: Duration = timedelta(seconds=6)
    """Group session timeout: a daemon that stops heartbeating loses its partitions after
    this long (heartbeats run on faust's consumer thread, so a busy event loop does not
    delay them). Some brokers (tansu) answer a join only after half of it, so it also bounds
    how fast a daemon starts consuming: faust's default, 60s, made that ~31s. 6s is the
    smallest value Kafka brokers accept by default (`group.min.session.timeout.ms`)."""
    heartbeat_interval: Duration = timedelta(seconds=2)
    rebalance_timeout: Duration = timedelta(seconds=20)
    """How long the group waits for members to rejoin during a rebalance."""
    request_timeout: Duration = timedelta(seconds=30)
    commit_interval: Duration = timedelta(seconds=1)
    """How often stored offsets are committed: a crash re-reads at most this much (as
    duplicates, which the store drops)."""

    @field_validator("brokers")
    @classmethod
    def _valid_brokers(cls, value: list[str]) -> list[str]:
        for broker in value:
            if not _BROKER.match(broker):
                raise ValueError(f"broker {broker!r}: write it as host:port")
        return value

    @field_validator("topic")
    @classmethod
    def _valid_topic(cls, value: str | list[str]) -> str | list[str]:
        topics = [value] if isinstance(value, str) else value
        if not topics:
            raise ValueError("name at least one topic")
        for topic in topics:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
                raise ValueError(f"invalid topic name {topic!r}")
        return value

    @field_validator("subject", "fingerprint")
    @classmethod
    def _valid_template(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Template(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _notifications_name_a_bucket(self) -> KafkaOptions:
        if self.format in NOTIFICATIONS:
            if self.bucket is None:
                raise ValueError(f"`format: {self.format}` needs `bucket`: the name of the "
                                 "bucket source the notifications are about (its listing "
                                 "finds what a lost notification missed)")
            if self.subject is not None or self.fingerprint is not None:
                raise ValueError(f"with `format: {self.format}` the events are the bucket "
                                 "source's: leave out `subject` and `fingerprint`")
        elif self.bucket is not None:
            raise ValueError("`bucket` applies to the notification formats "
                             f"({', '.join(NOTIFICATIONS)}) only")
        return self

    @model_validator(mode="after")
    def _valid_timers(self) -> KafkaOptions:
        if self.session_timeout < timedelta(seconds=1):
            raise ValueError("`session_timeout` must be at least 1s")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError("`heartbeat_interval` must be shorter than `session_timeout` "
                             "(a third of it is usual)")
        if self.request_timeout < self.session_timeout:
            raise ValueError("`request_timeout` must be at least `session_timeout`")
        if min(self.commit_interval, self.batch_wait, self.fetch_wait) <= timedelta(0):
            raise ValueError("`commit_interval`, `batch_wait` and `fetch_wait` must be positive")
        return self

    @property
    def topics(self) -> list[str]:
        return [self.topic] if isinstance(self.topic, str) else list(self.topic)

    def faust_settings(self) -> dict[str, Any]:
        """The faust App settings these options give (timers, start position)."""
        return {
            "consumer_auto_offset_reset": self.start,
            "broker_session_timeout": _seconds(self.session_timeout),
            "broker_heartbeat_interval": _seconds(self.heartbeat_interval),
            "broker_rebalance_timeout": _seconds(self.rebalance_timeout),
            "broker_request_timeout": _seconds(self.request_timeout),
            "broker_commit_interval": _seconds(self.commit_interval),
        }
