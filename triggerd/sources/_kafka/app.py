"""The faust app behind one `kafka` source, run inside triggerd's own event loop.

One faust `App` per source: its own consumer group, brokers and credentials, its own health,
and a failure (or a restart by the supervisor) that touches no other source. The app is built
inside `run` (never at import: a faust App binds the running loop) and started with
`await app.start()` — no `faust worker`, no signal handlers of faust's own, no web server, no
producer, no tables or changelog topics, no leader topic, no topic creation.

At least once, then deduplicated
    The agent takes batches off its channel (`_kafka/intake.py`, in place of faust's
    `stream.noack_take`): nothing is acknowledged by faust itself. A batch is decoded, its
    rejects recorded, its events stored (`ctx.emit` returns when they are durable), and only
    then is each message acknowledged; faust commits acknowledged offsets every
    `commit_interval`, on rebalance and on stop. faust's fetch loop hands a fetched batch to
    the conductor at a time (`_kafka/internals.py`). A crash between store and commit
    re-reads the uncommitted tail, whose fingerprints the store already holds: duplicates,
    counted, never a second trigger. The agent runs with concurrency 1 (faust-streaming issue
    #606: with concurrency > 1 it commits past in-flight messages).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from triggerd.plugin import TriggerdError
from triggerd.sources._kafka.decode import Record
from triggerd.sources._kafka.intake import BatchHandler, take_batches
from triggerd.sources._kafka.options import KafkaOptions, KafkaSecurity

__all__ = ["BatchHandler", "BrokerRefused", "BrokerUnreachable", "RepeatFilter", "build_app",
           "client_connected", "diagnose", "probe", "quiet_repeats", "record_of", "stop_app",
           "tune_fetch_wait"]

log = logging.getLogger("triggerd.sources.kafka")

class BrokerUnreachable(TriggerdError):
    """No broker answered (at start, or the consumer gave up on a lost connection)."""


class BrokerRefused(TriggerdError):
    """A broker answered, but the connection could not be secured or authenticated (TLS or
    SASL); the message says what to check, and never holds a secret."""


async def probe(name: str, options: KafkaOptions, credentials: Any) -> None:
    """Connect to each bootstrap broker in turn, as the consumer will (TCP, TLS, SASL, a
    metadata request, then a broker it advertises), until one answers; so that an unreachable
    broker, an untrusted certificate or refused credentials are one clear error here rather
    than a crashed faust consumer thread, or aiokafka's "Unable to bootstrap", which keeps
    the reason to its log."""
    from triggerd.sources._kafka import internals

    auth = internals.aiokafka_auth(credentials)
    unreachable: list[str] = []
    refused: list[str] = []
    for broker in options.brokers:
        host, _, port = broker.rpartition(":")
        try:
            await _reach(name, host.strip("[]"), int(port), options, auth)
            return
        except BrokerUnreachable as exc:
            unreachable.append(str(exc))
        except BrokerRefused as exc:
            refused.append(str(exc))
    if refused:  # the actionable reason first
        raise BrokerRefused("; ".join(refused + [f"{u} (unreachable)" for u in unreachable]))
    raise BrokerUnreachable("; ".join(unreachable))


async def _reach(name: str, host: str, port: int, options: KafkaOptions,
                 auth: dict[str, Any]) -> None:
    """Connect to one bootstrap broker and ask for metadata; then connect the same way to a
    broker it advertises, if that is another address (the consumer reads from those: their
    certificates must be trusted and name them too)."""
    from aiokafka.errors import KafkaError

    from triggerd.sources._kafka import internals

    where = f"{host}:{port}"
    conn = await _connect(name, host, port, where, options, auth)
    try:
        metadata = await internals.request_metadata(conn)
    except (KafkaError, TimeoutError) as exc:
        hint = "" if options.security.protocol.startswith("SASL_") else (
            ": does it require authentication (`protocol: SASL_SSL`)?")
        raise BrokerRefused(f"{where} did not answer a metadata request "
                            f"({type(exc).__name__}){hint}") from exc
    finally:
        conn.close()
    advertised = internals.advertised_brokers(metadata)
    if advertised and (host, port) not in advertised:
        other_host, other_port = advertised[0]
        other = await _connect(name, other_host, other_port,
                               f"{other_host}:{other_port} (a broker {where} advertises)",
                               options, auth)
        other.close()


async def _connect(name: str, host: str, port: int, where: str, options: KafkaOptions,
                   auth: dict[str, Any]) -> Any:
    """An aiokafka connection as the consumer makes it (TCP, TLS, a first request, SASL); with
    SASL made twice, first without it, to tell a TLS failure from a SASL one."""
    from triggerd.sources._kafka import internals

    security = options.security
    timeout_ms = int(options.request_timeout.total_seconds() * 1000)
    tls = security.protocol in ("SSL", "SASL_SSL")
    stages = [("transport", {"security_protocol": "SSL" if tls else "PLAINTEXT",
                             "ssl_context": auth.get("ssl_context")})]
    if security.protocol.startswith("SASL_"):
        stages.append(("sasl", auth))
    conn: Any = None
    for stage, settings in stages:
        if conn is not None:
            conn.close()
        try:
            conn = await internals.connect(host, port, client_id=f"triggerd-{name}-probe",
                                           request_timeout_ms=timeout_ms, **settings)
        except Exception as exc:
            raise diagnose(where, stage, security, exc, timeout_ms / 1000) from exc
    return conn


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH = (62, 64)
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "UNKNOWN_PROTOCOL", "HTTP_REQUEST")
_CLIENT_CERT = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                "CERTIFICATE_UNKNOWN", "HANDSHAKE_FAILURE", "ACCESS_DENIED")


def diagnose(where: str, stage: str, security: KafkaSecurity, exc: BaseException,
             timeout: float) -> BrokerUnreachable | BrokerRefused:
    """What a failed connection to `where` means for the user, from the exception chain.
    Only fixed text, the broker address, TLS library reasons and the config's own names go
    into the message: never an exception's text from the SASL exchange."""
    import ssl

    from aiokafka.errors import (
        AuthenticationFailedError,
        KafkaConnectionError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    chain = _causes(exc)
    verify = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if verify is not None:
        detail = (verify.verify_message or str(verify)).rstrip(".")
        if verify.verify_code in _NAME_MISMATCH:
            return BrokerRefused(
                f"TLS: the certificate of {where} is not for this host ({detail}): list the "
                "broker under a name its certificate holds, or set `check_hostname: false`")
        ca = (f"the CA in `cafile` {security.cafile}" if security.cafile
              else "a CA of this system (no `cafile` set)")
        return BrokerRefused(f"TLS: the certificate of {where} is not signed by {ca} "
                             f"({detail}): set `cafile` to the CA that signs the brokers")
    tls_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls_error is not None:
        reason = tls_error.reason or type(tls_error).__name__
        if any(r in reason for r in _NOT_TLS):
            return BrokerRefused(f"TLS: {where} does not answer with TLS ({reason}): is it "
                                 "a plaintext listener (`protocol: PLAINTEXT`)?")
        if any(r in reason for r in _CLIENT_CERT):
            return BrokerRefused(f"TLS: {where} refused the handshake ({reason}): "
                                 + _client_cert_hint(security))
        return BrokerRefused(f"TLS: handshake with {where} failed ({reason})")
    if stage == "transport":
        if any(isinstance(e, TimeoutError) for e in chain):
            hint = (": a listener that does not speak TLS never answers a TLS handshake"
                    if security.protocol in ("SSL", "SASL_SSL") else "")
            return BrokerUnreachable(f"{where}: no answer within {timeout:.0f}s{hint}")
        closed = next((e for e in chain if isinstance(e, KafkaConnectionError)), None)
        if closed is not None:  # connected (and handshaked), then closed on the first request
            if security.protocol in ("SSL", "SASL_SSL"):
                return BrokerRefused(f"TLS: {where} closed the connection after the TLS "
                                     "handshake: " + _client_cert_hint(security))
            return BrokerRefused(f"{where} closed the connection on the first request (if "
                                 "it expects TLS or SASL, set `security.protocol`)")
        os_error = next((e for e in chain if isinstance(e, OSError)), None)
        if os_error is not None:
            return BrokerUnreachable(f"{where}: {os_error.strerror or type(os_error).__name__}")
        return BrokerUnreachable(f"{where}: {type(exc).__name__}")
    # stage "sasl": TLS (if any) and a first request worked without SASL
    mechanism, user = security.mechanism, security.username
    check = f"check `username` and the password in environment variable {security.password_env}"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return BrokerRefused(f"SASL: {where} does not accept mechanism {mechanism}: set "
                             "`mechanism` to one the broker enables (or it has no SASL)")
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError):
        return BrokerRefused(f"SASL: {where} refused {mechanism} authentication as "
                             f"{user!r}: {check}")
    if any(isinstance(e, TimeoutError) for e in chain):
        return BrokerUnreachable(f"{where}: no answer within {timeout:.0f}s during SASL "
                                 "authentication")
    if isinstance(exc, KafkaConnectionError):
        return BrokerRefused(f"SASL: {where} closed the connection during {mechanism} "
                             f"authentication as {user!r}: the broker may not enable "
                             f"{mechanism}, or refused the credentials ({check})")
    if isinstance(exc, KeyError) and str(mechanism).startswith("SCRAM-"):
        # the broker's last SCRAM message holds an error ("e=invalid-proof",
        # "e=unknown-user") instead of its signature, and aiokafka trips on the missing "v"
        return BrokerRefused(f"SASL: {where} refused {mechanism} authentication as {user!r} "
                             f"(unknown user or wrong password): {check}")
    return BrokerRefused(f"SASL: {mechanism} authentication as {user!r} with {where} failed "
                         f"({type(exc).__name__}): {check}")


def _client_cert_hint(security: KafkaSecurity) -> str:
    if security.certfile is None:
        return ("the broker may require a client certificate (set `certfile` and `keyfile`)")
    return (f"the broker may not accept the client certificate `certfile` {security.certfile} "
            "(is it signed by a CA the broker trusts, and still valid?)")


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def build_app(name: str, options: KafkaOptions, credentials: Any,
              handle: BatchHandler) -> Any:
    from faust.app import BootStrategy

    from triggerd.sources._kafka.internals import SourceApp

    class _Boot(BootStrategy):
        enable_web = False
        enable_kafka_producer = False  # the source only reads
        enable_sensors = False  # faust's Monitor costs CPU per message and serves nothing

    class _App(SourceApp):  # the fetch loop, no data directory, `stopping`: see internals
        BootStrategy = _Boot

    app = _App(
        options.group,
        broker=[f"kafka://{b}" for b in options.brokers],
        broker_credentials=credentials,
        broker_client_id=f"triggerd-{name}",
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        topic_disable_leader=True,
        topic_allow_declare=False,
        **options.faust_settings(),
    )
    topic = app.topic(*options.topics, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    batch, within = options.batch, options.batch_wait.total_seconds()

    async def agent(stream: Any) -> None:
        # not `async for ... in stream.noack_take(...)`: see _kafka/intake.py
        await take_batches(app, aiter(stream.channel), batch, within, handle)

    app.agent(topic, name=f"triggerd-kafka-{name}", concurrency=1)(agent)
    return app


class RepeatFilter(logging.Filter):
    """Let each distinct message template of a logger through at most once per `every`
    seconds: while a broker is away aiokafka logs the same connection error ~10 times a
    second, which would bury everything else."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


_NOISY = ("aiokafka", "aiokafka.conn", "aiokafka.client", "aiokafka.consumer.fetcher",
          "aiokafka.consumer.group_coordinator", "aiokafka.consumer.consumer",
          "faust.transport.drivers.aiokafka")
_repeat_filter = RepeatFilter()


def quiet_repeats() -> None:
    """Install the repeat filter on the loggers that flood while a broker is away (once)."""
    for name in _NOISY:
        logger = logging.getLogger(name)
        if _repeat_filter not in logger.filters:
            logger.addFilter(_repeat_filter)


def record_of(event: Any) -> Record:
    m = event.message
    headers = m.headers or ()
    if isinstance(headers, dict):
        headers = list(headers.items())
    return Record(topic=m.topic, partition=m.partition, offset=m.offset,
                  timestamp=m.timestamp, key=m.key, value=m.value,
                  headers=[(str(k), v) for k, v in headers])


def tune_fetch_wait(app: Any, seconds: float) -> None:
    """Set how long the broker may hold an empty fetch. faust hard-codes 1.5 s
    (`fetch_max_wait_ms=1500` in its aiokafka driver), and brokers that hold a fetch for the
    whole wait even when a message arrives (tansu) then add up to that much latency to every
    message on an idle topic. aiokafka reads the value per request, so setting it on the
    running fetcher is enough."""
    from triggerd.sources._kafka import internals

    internals.set_fetch_max_wait(app, seconds)


def client_connected(app: Any) -> bool:
    """Whether the consumer holds at least one live broker connection (read without
    touching the consumer thread's loop: a snapshot of plain attributes)."""
    from triggerd.sources._kafka import internals

    return internals.client_connected(app)


STOP_TIMEOUT = 10.0
STOP_TIMEOUT_UNREACHABLE = 1.0


async def stop_app(app: Any) -> None:
    """Stop the app (commit what was acknowledged, leave the group), bounded in time: with
    no live broker connection there is no one to commit to or leave, and aiokafka would
    spend the whole bound retrying, so the bound is short (what was acknowledged but not
    committed is read again after a restart, and the store counts it as a duplicate)."""
    app.stopping = True
    bound = STOP_TIMEOUT if client_connected(app) else STOP_TIMEOUT_UNREACHABLE
    task = asyncio.ensure_future(app.stop())
    done, _ = await asyncio.wait({task}, timeout=bound)
    if not done:
        task.cancel()
        log.warning("faust app %s did not stop within %.0fs%s; abandoned", app.conf.id,
                    bound, "" if bound == STOP_TIMEOUT else " (no broker reachable)")
    elif task.exception() is not None:
        log.warning("faust app %s: error while stopping: %s", app.conf.id, task.exception())
