"""The store password: given apart from the URL (TRIGGERD_STORE_PASSWORD, no URL-encoding),
and never printed, not even when a real PostgreSQL connection fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest
from pg_fresh import PG_ADMIN_URL
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from triggerd.errors import StoreError
from triggerd.store import Store
from triggerd.store.connect import PASSWORD_ENV, redact, store_url

SECRET = "S3cr@t/pa%41ss:#wörd"  # every character that breaks a URL, and %41 (not an "A")
CONFIG = """
    state_dir: state
    sources:
      tick: {type: cron, every: 1h}
    backends:
      train: {type: command, argv: ["true"]}
    rules:
      periodic: {on: [tick], dispatch: {backend: train}}
"""


def _pg_up() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def test_the_password_from_the_environment_is_used_as_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    store = Store("postgresql+psycopg://triggerd@db.internal:5432/triggerd")
    try:
        assert store.engine.url.password == SECRET
        assert store.engine.url.host == "db.internal" and store.engine.url.database == "triggerd"
        assert SECRET not in store.safe_url and "***" in store.safe_url
    finally:
        store.close()


def test_a_password_in_the_query_is_masked_like_one_in_the_authority(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    store = Store("postgresql+psycopg://triggerd@db.internal/triggerd?password=qpw-1234"
                  "&sslmode=require")
    try:
        assert store.engine.url.password == "qpw-1234"
        assert store.engine.url.query == {"sslmode": "require"}
        assert "qpw-1234" not in store.safe_url and "***" in store.safe_url
    finally:
        store.close()


def test_the_environment_password_is_not_applied_to_sqlite(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    assert store_url(f"sqlite:///{tmp_path / 's.db'}").password is None


def test_a_url_broken_by_its_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(StoreError) as err:
        store_url("postgresql+psycopg://triggerd:p@ss/word@db/triggerd")
    message = str(err.value)
    assert PASSWORD_ENV in message and "'@'" in message
    assert "ss/word" not in message and "p@ss" not in message
    with pytest.raises(StoreError) as err:
        store_url("not a url: triggerd:hunter2")
    assert "hunter2" not in str(err.value)


def test_redact_removes_the_password_in_any_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    store_url("postgresql+psycopg://u@h/d")
    driver_text = f"bad password {SECRET!s} or {quote(SECRET, safe='')} in dsn"
    cleaned = redact(driver_text)
    assert SECRET not in cleaned and quote(SECRET, safe="") not in cleaned
    assert cleaned == "bad password *** or *** in dsn"


@pytest.mark.parametrize("where", ["env", "url"])
def test_a_failing_postgresql_connection_never_prints_the_password(
        tmp_path: Path, where: str) -> None:
    """A real server, a store that cannot be opened (the user and database do not exist; trust
    auth would accept any password): every command says what failed, and no output holds the
    password, as written or URL-encoded."""
    if not _pg_up():
        pytest.skip("PostgreSQL not reachable")
    config = tmp_path / "triggerd.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    base = make_url(PG_ADMIN_URL).set(username="no_such_user_x", database="no_such_db_x")
    env = {"PATH": "/usr/bin:/bin"}
    if where == "env":
        env["TRIGGERD_STORE"] = base.render_as_string(hide_password=False)
        env[PASSWORD_ENV] = SECRET
    else:
        env["TRIGGERD_STORE"] = base.set(password=SECRET).render_as_string(hide_password=False)
    for args in (["status"], ["db", "upgrade"], ["run"], ["check"]):
        res = subprocess.run([sys.executable, "-m", "triggerd", args[0], "--config",
                              str(config), *args[1:]], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=60, check=False)
        output = res.stdout + res.stderr
        for spelling in (SECRET, quote(SECRET, safe=""), "S3cr", "wörd"):
            assert spelling not in output, (args, output)
        assert "Traceback" not in output, (args, output)
        if args != ["check"]:
            assert res.returncode == 1, (args, output)
            assert "no_such_user_x" in output and "***" in output, (args, output)
        else:  # check names the store, masked
            assert res.returncode == 0 and "no_such_user_x:***@" in res.stdout, output


def test_the_environment_password_reaches_the_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the session's database (trust auth accepts any password, so this shows the
    password does not break the connection parameters)."""
    if not _pg_up():
        pytest.skip("PostgreSQL not reachable")
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    store = Store(PG_ADMIN_URL)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        store.close()


def test_log_lines_lose_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's log handler filter: a message or traceback quoting the password."""
    import logging

    from triggerd.store.connect import RedactFilter

    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    store_url("postgresql+psycopg://u@h/d")
    record = logging.LogRecord("triggerd.x", logging.WARNING, __file__, 1,
                               "store unavailable (%s)", (f"password={SECRET}",), None)
    assert RedactFilter().filter(record)
    assert record.getMessage() == "store unavailable (password=***)"
    try:
        raise RuntimeError(f"dsn password={quote(SECRET, safe='')}")
    except RuntimeError:
        record = logging.LogRecord("triggerd.x", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    RedactFilter().filter(record)
    out = logging.Formatter().format(record)
    assert "RuntimeError: dsn password=***" in out and quote(SECRET, safe="") not in out
