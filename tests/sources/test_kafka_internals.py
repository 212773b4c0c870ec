"""Guard for the faust/mode/aiokafka internals the `kafka` source relies on (no broker needed).

triggerd/sources/_kafka/internals.py is the one module of the source that uses private names
of faust-streaming, mode-streaming and aiokafka; its docstring lists them (numbered 1-9).
`test_internal_still_has_the_shape_relied_on` checks each one against the installed
libraries: present, callable, coroutine or not, parameters, called where faust calls it, and
for the fetch loop copied from faust, faust's loop unchanged. A failure names the internal,
the installed version and what the source uses it for: after an upgrade, read that entry of
the internals docstring and adapt internals.py (or the pin in pyproject.toml).

`test_no_private_faust_names_outside_internals` keeps the other modules of the source clean.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import ssl
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import triggerd.sources._kafka.internals as internals

MODULE = "triggerd/sources/_kafka/internals.py"
VERSIONS = {dist: version(dist) for dist in ("faust-streaming", "mode-streaming", "aiokafka")}
SOURCES = Path(internals.__file__).resolve().parent.parent  # triggerd/sources
ROOT = SOURCES.parent.parent

# sha256 of faust's `Consumer._drain_messages` as ast.unparse gives it (comments and layout do
# not count) in faust-streaming 0.15.3, the loop `BatchConsumer._drain_messages` copies. If
# faust changes it, compare the two loops again, adapt BatchConsumer, then update this digest.
DRAIN_MESSAGES_SHA256 = "3e3742ba998ee65d8be5a4a4745a03eeab3e71969ce93b29065c54ae8fd13977"


def _obj(path: str) -> Any:
    """`package.module:Attr.attr` -> the object (an import or attribute error if gone)."""
    module, _, attrs = path.partition(":")
    found: Any = importlib.import_module(module)
    for attr in filter(None, attrs.split(".")):
        found = getattr(found, attr)
    return found


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def _tree(obj: Any) -> ast.AST:
    obj = getattr(obj, "fun", obj)  # a mode `@Service.task`: the function it runs
    return ast.parse(textwrap.dedent(inspect.getsource(obj)))


def _self_attrs(cls: type, stored: bool) -> set[str]:
    """Names set on `self` (stored=True) or read from it, in the source of `cls` and its
    bases, plus names annotated or assigned in the class bodies."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            tree = _tree(klass)
        except (OSError, TypeError):  # builtins, C classes
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and isinstance(node.ctx, ast.Store) == stored):
                names.add(node.attr)
        if stored:
            body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
            for stmt in body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    names.add(stmt.target.id)
                elif isinstance(stmt, ast.Assign):
                    names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return names


def _has_attr(cls: type, *attrs: str) -> None:
    """Each of `attrs` is a class attribute of `cls` or set on `self` by it or its bases."""
    set_somewhere = _self_attrs(cls, stored=True)
    missing = [a for a in attrs if not hasattr(cls, a) and a not in set_somewhere]
    assert not missing, f"{cls.__module__}.{cls.__qualname__} has no {', '.join(missing)}"


def _calls(obj: Any, name: str) -> None:
    """The source of `obj` calls something named `name` (`x.name(...)`)."""
    for node in ast.walk(_tree(obj)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == name):
            return
    obj = getattr(obj, "fun", obj)
    raise AssertionError(f"{obj.__module__}.{obj.__qualname__} no longer calls {name}()")


def _method(path: str, params: list[str], coroutine: bool | None) -> Any:
    """`path` is callable with `params` first, and `async def` or not (None: either)."""
    func = _obj(path)
    assert callable(func), f"{path} is not callable"
    assert coroutine is None or inspect.iscoroutinefunction(func) == coroutine, (
        f"{path} is {'not ' if coroutine else ''}a coroutine function any more")
    got = _params(func)
    assert got[:len(params)] == params, f"{path} takes {got}, not {params}"
    return func


def _drain_messages_digest() -> str:
    func = _obj("faust.transport.consumer:Consumer._drain_messages")
    return hashlib.sha256(ast.unparse(_tree(func)).encode()).hexdigest()


# -- the checks, one per internal (numbers as in the internals docstring) ------------------

def check_new_transport() -> None:
    _method("faust:App._new_transport", ["self"], coroutine=False)
    _calls(_obj("faust.app.base:App"), "_new_transport")
    got = _params(_obj("faust.transport.base:Transport.__init__"))
    assert got[:3] == ["self", "url", "app"], f"Transport(...) takes {got}"


def check_create_directories() -> None:
    _method("faust:App._create_directories", ["self"], coroutine=False)
    _calls(_obj("faust.app.base:App"), "_create_directories")


def check_consumer_wait_empty() -> None:
    _method("faust:App._consumer_wait_empty", ["self", "consumer", "logger"], coroutine=True)
    _calls(_obj("faust.app.base:App"), "_consumer_wait_empty")


def check_aiokafka_driver() -> None:
    consumer = _obj("faust.transport.drivers.aiokafka:Consumer")
    transport = _obj("faust.transport.drivers.aiokafka:Transport")
    assert issubclass(consumer, _obj("faust.transport.consumer:Consumer")), (
        "the driver's Consumer is no longer a faust.transport.consumer.Consumer")
    assert hasattr(transport, "Consumer"), "Transport has no class attribute Consumer"
    _calls(_obj("faust.transport.base:Transport.create_consumer"), "Consumer")


def check_credentials_to_aiokafka_auth() -> None:
    from faust.auth import SASLCredentials, SSLCredentials

    func = _obj("faust.transport.drivers.aiokafka:credentials_to_aiokafka_auth")
    assert _params(func)[:1] == ["credentials"], f"it takes {_params(func)}"
    accepted = set(_params(_obj("aiokafka.conn:create_conn")))
    context = ssl.create_default_context()
    for credentials, keys in [
        (None, {"security_protocol"}),
        (SSLCredentials(context), {"security_protocol", "ssl_context"}),
        (SASLCredentials(username="u", password="p", ssl_context=context, mechanism="PLAIN"),
         {"security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username",
          "sasl_plain_password"}),
    ]:
        auth = internals.aiokafka_auth(credentials)
        assert keys <= set(auth), f"for {type(credentials).__name__} it gives {sorted(auth)}"
        assert set(auth) <= accepted, (
            f"it gives {sorted(set(auth) - accepted)}, which create_conn does not take")


def check_drain_messages() -> None:
    _method("faust.transport.consumer:Consumer._drain_messages", ["self", "fetcher"],
            coroutine=True)
    _calls(_obj("faust.transport.consumer:Fetcher._fetcher"), "_drain_messages")
    digest = _drain_messages_digest()
    assert digest == DRAIN_MESSAGES_SHA256, (
        "faust's fetch loop is not the one BatchConsumer._drain_messages copies (compare "
        f"them, adapt BatchConsumer, then set DRAIN_MESSAGES_SHA256 = {digest!r})")


def check_consumer_state() -> None:
    consumer = _obj("faust.transport.drivers.aiokafka:Consumer")
    _has_attr(consumer, "_read_offset", "_commit_every", "_n_acked", "_stopped", "getmany",
              "callback", "suspend_flow", "flow_active", "consumer_stopped_errors", "diag",
              "commit", "app", "transport", "wait_first", "sleep", "should_stop", "log")
    _method("faust.transport.consumer:Consumer._add_gap",
            ["self", "tp", "offset_from", "offset_to"], coroutine=True)
    _obj("faust.transport.consumer:CONSUMER_FETCHING")
    _has_attr(_obj("faust.transport.consumer:Fetcher"), "_stopped")
    fields = _obj("mode.services:WaitResults")._fields
    assert {"done", "results"} <= set(fields), f"wait_first results have {fields}"


def check_mode_stopped() -> None:
    _has_attr(_obj("mode:Service"), "_stopped")
    stopped = _obj("mode.utils.locks:Event")
    assert callable(getattr(stopped, "is_set", None)), "mode's Event has no is_set()"


def check_consumer_thread() -> None:
    _has_attr(_obj("faust.transport.consumer:ThreadDelegateConsumer"), "_thread")
    got = inspect.signature(_obj("faust.transport.drivers.aiokafka:Consumer"
                                 "._new_consumer_thread")).return_annotation
    assert "AIOKafkaConsumerThread" in str(got), f"the consumer thread is a {got}"
    _has_attr(_obj("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread"), "_consumer")
    _has_attr(_obj("aiokafka:AIOKafkaConsumer"), "_fetcher", "_client")


def check_fetch_max_wait() -> None:
    fetcher = _obj("aiokafka.consumer.fetcher:Fetcher")
    _has_attr(fetcher, "_fetch_max_wait_ms")
    read_by = [name for name, member in vars(fetcher).items()
               if inspect.isfunction(member) and name != "__init__"
               and "_fetch_max_wait_ms" in _self_attrs_of(member)]
    assert read_by, "Fetcher no longer reads _fetch_max_wait_ms when it makes a request"


def _self_attrs_of(func: Any) -> set[str]:
    return {n.attr for n in ast.walk(_tree(func)) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "self"}


def check_client_conns() -> None:
    _has_attr(_obj("aiokafka.client:AIOKafkaClient"), "_conns")
    _method("aiokafka.conn:AIOKafkaConnection.connected", ["self"], coroutine=False)


def check_create_conn() -> None:
    _method("aiokafka.conn:create_conn", ["host", "port"], coroutine=True)
    got = set(_params(_obj("aiokafka.conn:create_conn")))
    wanted = {"client_id", "request_timeout_ms", "ssl_context", "security_protocol",
              "sasl_mechanism", "sasl_plain_username", "sasl_plain_password"}
    assert wanted <= got, f"create_conn takes no {sorted(wanted - got)}"
    _method("aiokafka.conn:AIOKafkaConnection.send", ["self", "request"], coroutine=None)
    _method("aiokafka.conn:AIOKafkaConnection.close", ["self"], coroutine=None)


def check_metadata() -> None:
    _obj("aiokafka.protocol.metadata:MetadataRequest")([])
    module = _obj("aiokafka.protocol.metadata")
    responses = [getattr(module, n) for n in dir(module) if n.startswith("MetadataResponse_v")]
    assert responses, "aiokafka.protocol.metadata has no MetadataResponse_v* any more"
    for response in responses:
        schema = response.SCHEMA
        brokers = schema.fields[schema.names.index("brokers")].array_of.names
        assert tuple(brokers[:3]) == ("node_id", "host", "port"), (
            f"{response.__name__}.brokers rows are {brokers}")
    sample = responses[0](brokers=[(1, "b1", 9092)], topics=[])
    assert internals.advertised_brokers(sample) == [("b1", 9092)]


def check_consumer_thread_stop() -> None:
    _method("faust.transport.drivers.aiokafka:Consumer._new_consumer_thread", ["self"],
            coroutine=False)
    thread = _obj("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread")
    got = _params(thread.__init__)
    assert got[:2] == ["self", "consumer"], f"AIOKafkaConsumerThread(...) takes {got}"
    _method("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.on_thread_stop",
            ["self"], coroutine=True)
    _calls(thread.on_thread_stop, "stop")  # stops the aiokafka consumer there
    _has_attr(thread, "_consumer")
    _method("aiokafka.client:AIOKafkaClient.close", ["self"], coroutine=True)
    _has_attr(_obj("aiokafka:AIOKafkaConsumer"), "_client")


@dataclass(frozen=True)
class Internal:
    dist: str
    name: str  # as it appears in the internals docstring
    use: str
    check: Callable[[], None]


INTERNALS = [
    Internal("faust-streaming", "App._new_transport()",
             "making faust's consumer with the batch fetch loop (1)", check_new_transport),
    Internal("faust-streaming", "App._create_directories()",
             "not creating a data directory (2)", check_create_directories),
    Internal("faust-streaming", "App._consumer_wait_empty(consumer, logger)",
             "a stop that does not wait for unacknowledged messages (3)",
             check_consumer_wait_empty),
    Internal("faust-streaming", "faust.transport.drivers.aiokafka",
             "subclassing faust's aiokafka Consumer and Transport (4)", check_aiokafka_driver),
    Internal("faust-streaming", "credentials_to_aiokafka_auth(credentials)",
             "the probe's connection settings (4)", check_credentials_to_aiokafka_auth),
    Internal("faust-streaming", "Consumer._drain_messages(fetcher)",
             "the batch fetch loop that replaces it (5)", check_drain_messages),
    Internal("faust-streaming", "Consumer._read_offset",
             "the batch fetch loop, which reads the consumer's private state (5)",
             check_consumer_state),
    Internal("mode-streaming", "Service._stopped",
             "the batch fetch loop's stop condition (5)", check_mode_stopped),
    Internal("faust-streaming", "app.consumer._thread",
             "reaching the running aiokafka consumer (6, 7)", check_consumer_thread),
    Internal("aiokafka", "_fetch_max_wait_ms",
             "lowering faust's hard-coded fetch wait of 1.5 s (6)", check_fetch_max_wait),
    Internal("aiokafka", "_conns", "the source's health (7)", check_client_conns),
    Internal("aiokafka", "aiokafka.conn.create_conn",
             "the probe's connection to each broker (8)", check_create_conn),
    Internal("aiokafka", "aiokafka.protocol.metadata.MetadataRequest",
             "the probe's metadata request and the brokers it advertises (9)",
             check_metadata),
    Internal("faust-streaming", "Consumer._new_consumer_thread()",
             "a consumer thread that stops cleanly in a broker outage (10)",
             check_consumer_thread_stop),
]


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: i.name)
def test_internal_still_has_the_shape_relied_on(internal: Internal) -> None:
    try:
        internal.check()
        return
    except (AssertionError, AttributeError, ImportError, TypeError, ValueError, OSError,
            KeyError, IndexError) as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    installed = ", ".join(f"{d} {v}" for d, v in VERSIONS.items())
    pytest.fail(f"{internal.dist} {VERSIONS[internal.dist]} changed {internal.name}: "
                f"{MODULE} relies on it for {internal.use}. {detail} (installed: "
                f"{installed}; see the internals docstring)", pytrace=False)


def test_every_internal_checked_is_documented() -> None:
    doc = internals.__doc__ or ""
    undocumented = [i.name for i in INTERNALS if i.name not in " ".join(doc.split())]
    assert not undocumented, f"{MODULE}'s docstring does not list {undocumented}"


# -- no private faust/mode/aiokafka name outside internals.py ------------------------------

LIBRARIES = ("faust", "mode", "aiokafka")
PUBLIC_MODULES = {"faust", "faust.app", "faust.auth", "mode", "aiokafka", "aiokafka.errors"}
"""The only faust/mode/aiokafka modules other modules of the source may import from."""
INTERNALS_MODULE = "triggerd.sources._kafka.internals"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(path: Path) -> list[str]:
    """Uses of private faust/mode/aiokafka names in one module (see the test's docstring)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    foreign: set[str] = set()  # local names bound to faust/mode/aiokafka or internals objects

    def where(node: ast.AST) -> str:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        return f"{shown}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in LIBRARIES:
                    foreign.add(alias.asname or root)
                    if alias.name not in PUBLIC_MODULES:
                        found.append(f"{where(node)}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            names = [a.asname or a.name for a in node.names]
            if root in LIBRARIES:
                foreign.update(names)
                if node.module not in PUBLIC_MODULES:
                    found.append(f"{where(node)}: from {node.module} import ...")
                found += [f"{where(node)}: imports {a.name} from {node.module}"
                          for a in node.names if _private(a.name)]
            elif node.module == INTERNALS_MODULE:
                foreign.update(names)
            elif node.module == "triggerd.sources._kafka" and "internals" in names:
                foreign.add("internals")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue  # checked below, for classes derived from the libraries
            found.append(f"{where(node)}: ._{node.attr[1:]} on {ast.unparse(owner)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
            found.append(f"{where(node)}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.ClassDef):
            bases = {ast.unparse(b).split(".")[0] for b in node.bases}
            if not bases & foreign:
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and _private(
                        sub.name):
                    found.append(f"{where(sub)}: overrides {node.name}.{sub.name}")
                elif (isinstance(sub, ast.Attribute) and _private(sub.attr)
                      and isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls")):
                    found.append(f"{where(sub)}: {sub.value.id}.{sub.attr} in {node.name}")
    return found


def test_no_private_faust_names_outside_internals() -> None:
    """The modules of the source other than internals.py (kafka.py, _kafka/*.py) use no
    private name of faust, mode or aiokafka. A practical, syntactic check; what it catches:
    - an import from a faust/mode/aiokafka module other than the public ones in
      PUBLIC_MODULES (e.g. `faust.transport.drivers.aiokafka`, `aiokafka.conn`), or of a
      name starting with `_`;
    - `x._name` on anything but `self`/`cls` (the modules checked have no private attribute
      of their own objects to read that way), and getattr/setattr/hasattr/delattr with a
      literal `_name`;
    - in a class whose base comes from faust/mode/aiokafka or from internals.py: a method
      named `_name` (an override of a private method) or `self._name`.
    Its limits: it is not type-aware, so `self._name` in a class that gets a library base
    through another route (a base defined in another module of ours, a dynamic base), a
    private name reached through a computed getattr string, and public-named internals
    (`app.consumer_generation_id`, `channel.queue`, as `_kafka/intake.py` uses) are not
    caught; dunder names are allowed.
    """
    checked = [SOURCES / "kafka.py",
               *sorted(p for p in (SOURCES / "_kafka").glob("*.py") if p.name != "internals.py")]
    assert len(checked) > 5, checked
    found = [use for path in checked for use in _private_uses(path)]
    assert not found, (
        "private faust/mode/aiokafka names used outside triggerd/sources/_kafka/internals.py "
        "(move them there, listed in its docstring and checked here):\n  " + "\n  ".join(found))


def test_the_check_catches_private_uses(tmp_path: Path) -> None:
    """The syntactic check itself, on a module with each kind of use it catches."""
    module = tmp_path / "sample.py"
    module.write_text(textwrap.dedent("""
        from faust.transport.drivers.aiokafka import Consumer
        from faust.app import BootStrategy
        from triggerd.sources._kafka.internals import SourceApp

        def f(app):
            return app.consumer._thread, getattr(app, "_conf")

        class A(SourceApp):
            def _new_transport(self):
                return self._transport

        class Ours:
            def _mine(self):
                return self._state
    """))
    kinds = sorted(use.split(": ", 1)[1] for use in _private_uses(module))
    assert kinds == sorted(["from faust.transport.drivers.aiokafka import ...",
                            "._thread on app.consumer", "getattr(..., '_conf')",
                            "overrides A._new_transport", "self._transport in A"]), kinds
