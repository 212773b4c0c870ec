"""The command backend against real subprocesses (portable `sys.executable -c` scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest
from fake_job import FakeJob
from pydantic import ValidationError

from triggerd import registry
from triggerd.backends import command
from triggerd.backends.command import CommandBackend, CommandOptions
from triggerd.config.loader import load_config
from triggerd.errors import PermanentDispatchError, TransientDispatchError
from triggerd.interfaces import Backend
from triggerd.model import TriggerContext

PY = sys.executable


def make_ctx(**changes: Any) -> TriggerContext:
    values: dict[str, Any] = {
        "trigger_id": "retrain.7",
        "rule": "retrain",
        "group": "",
        "fired_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "reason": "10 new events (≥10), quiet for 2m",
        "manual": False,
        "params": {"model": "resnet"},
        "events": [{"id": "e1", "source": "landing", "payload": {"path": "/data/a.parquet"}}],
    }
    values.update(changes)
    return TriggerContext(**values)


def make_backend(tmp_path: Path, **options: Any) -> CommandBackend:
    opts = CommandOptions.model_validate({"type": "command", **options})
    return CommandBackend("train", opts, tmp_path / "state")


def script(source: str) -> str:
    return textwrap.dedent(source).strip() + "\n"


def literal(text: str) -> str:
    """Argv items are templates: braces in a literal script are doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (PID 1 here may not reap orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# A child that records what it saw: argv, env, cwd, trigger file, session, stdin.
REPORT = script("""
    import json, os, sys
    seen = {
        "argv": sys.argv[2:],
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("TRIGGERD_", "MODEL_", "API_", "INHERITED_"))},
        "cwd": os.getcwd(),
        "own_session": os.getsid(0) == os.getpid(),
        "stdin": sys.stdin.read(),
        "trigger": json.load(open(os.environ["TRIGGERD_TRIGGER_FILE"])),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(seen, f)
    print("hello from the child")
    print("to stderr", file=sys.stderr)
""")

# Writes its pid to argv[1] atomically, optionally ignoring SIGTERM first, then sleeps.
SLEEPER = script("""
    import os, signal, sys, time
    if "ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(60)
""")

# Starts a SLEEPER grandchild (same process group), records its pid, then sleeps itself.
PARENT = script("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", sys.argv[1]] + sys.argv[2:])
    time.sleep(60)
""")


def test_backend_protocol_options_and_registry(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, argv=["true"])
    assert isinstance(backend, Backend)
    assert backend.name == "train"
    assert registry.backend_class("command") is CommandBackend
    opts = backend.options
    assert (opts.inherit_env, opts.timeout, opts.kill_grace.total_seconds()) == (True, None, 10)
    assert (opts.output_limit, opts.tail, opts.success_codes) == (1024 * 1024, 2000, [0])
    parsed = CommandOptions.model_validate(
        {"type": "command", "argv": ["x"], "timeout": "2h", "output_limit": "512KiB"})
    assert parsed.timeout is not None and parsed.timeout.total_seconds() == 7200
    assert parsed.output_limit == 512 * 1024
    for bad in ({"argv": []}, {"argv": ["x"], "shell": True}, {"argv": ["x"], "timeout": "5"}):
        with pytest.raises(pydantic.ValidationError):
            CommandOptions.model_validate({"type": "command", **bad})
    assert "argv" in CommandOptions.model_json_schema()["properties"]


def test_templates_are_validated_with_the_options(tmp_path: Path) -> None:
    """Bad templates are config errors, so `triggerd check` reports them."""
    with pytest.raises(ValidationError, match=r"argv\[1\]: unclosed '\{'"):
        make_backend(tmp_path, argv=["train", "{params.model"])
    with pytest.raises(ValidationError, match="workdir"):
        make_backend(tmp_path, argv=["train"], workdir="/srv/{}")
    with pytest.raises(ValidationError) as info:
        make_backend(tmp_path, argv=["train"], env={"API_TOKEN": "s3cret{x y}"})
    assert "API_TOKEN" in str(info.value)
    assert "s3cret" not in str(info.value)


async def test_success_passes_env_trigger_file_and_workdir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INHERITED_VAR", "from-daemon")
    (tmp_path / "wd-resnet").mkdir()
    seen_file = tmp_path / "seen.json"
    backend = make_backend(
        tmp_path, argv=[PY, "-c", literal(REPORT), str(seen_file)],
        workdir=str(tmp_path / "wd-{params.model}"),
        env={"MODEL_NAME": "{params.model}", "API_TOKEN": "s3cret-token"})
    ctx, job = make_ctx(), FakeJob(attempt=2)

    result = await backend.dispatch(ctx, job)

    seen = json.loads(seen_file.read_text())
    job_dir = (tmp_path / "state" / "jobs" / "retrain.7").absolute()
    assert seen["env"] == {
        "INHERITED_VAR": "from-daemon",
        "MODEL_NAME": "resnet",
        "API_TOKEN": "s3cret-token",
        "TRIGGERD_TRIGGER_ID": "retrain.7",
        "TRIGGERD_RULE": "retrain",
        "TRIGGERD_TRIGGER_FILE": str(job_dir / "trigger.json"),
        "TRIGGERD_ATTEMPT": "2",
    }
    assert seen["trigger"] == ctx.to_dict()
    assert seen["cwd"] == str(tmp_path / "wd-resnet")
    assert seen["own_session"] is True
    assert seen["stdin"] == ""
    assert result.exit_code == 0
    assert job.external_ids == [result.external_id]
    assert result.external_id is not None and result.external_id.startswith("pid:")
    assert result.detail is not None and "hello from the child" in result.detail
    assert "s3cret" not in result.detail
    log = (job_dir / "output.log").read_text()
    assert "hello from the child" in log and "to stderr" in log
    assert sorted(p.name for p in job_dir.iterdir()) == ["output.log", "trigger.json"]


async def test_inherit_env_false_passes_only_configured_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INHERITED_VAR", "from-daemon")
    seen_file = tmp_path / "seen.json"
    backend = make_backend(tmp_path, argv=[PY, "-c", literal(REPORT), str(seen_file)],
                           inherit_env=False, env={"MODEL_NAME": "{rule}"})
    await backend.dispatch(make_ctx(), FakeJob())
    env = json.loads(seen_file.read_text())["env"]
    assert "INHERITED_VAR" not in env
    assert env["MODEL_NAME"] == "retrain"
    assert env["TRIGGERD_TRIGGER_ID"] == "retrain.7"


async def test_hostile_values_are_single_argv_items(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    hostile = f"$(touch {canary}); rm -rf {tmp_path}/nothing-here `touch {canary}` && echo"
    seen_file = tmp_path / "seen.json"
    backend = make_backend(tmp_path, argv=[
        PY, "-c", literal(REPORT), str(seen_file), "{trigger_id}", "{rule}",
        "--model={params.model}", "{reason}", "{attempt}", "{events.0.payload.path}", "{params}"])
    await backend.dispatch(make_ctx(params={"model": hostile}), FakeJob(attempt=3))
    assert json.loads(seen_file.read_text())["argv"] == [
        "retrain.7", "retrain", f"--model={hostile}", "10 new events (≥10), quiet for 2m", "3",
        "/data/a.parquet", json.dumps({"model": hostile}, sort_keys=True)]
    assert not canary.exists()


async def test_nonzero_exit_is_transient_with_code_and_tail(tmp_path: Path) -> None:
    child = "import sys; print('step 1'); print('boom: CUDA out of memory', file=sys.stderr); " \
            "sys.exit(3)"
    backend = make_backend(tmp_path, argv=[PY, "-c", child])
    job = FakeJob()
    with pytest.raises(TransientDispatchError) as info:
        await backend.dispatch(make_ctx(), job)
    err = info.value
    assert err.exit_code == 3
    assert err.detail.startswith("exit code 3")
    assert "boom: CUDA out of memory" in err.detail
    assert err.external_id == job.external_ids[0]


async def test_success_codes_and_tail_length(tmp_path: Path) -> None:
    child = "import sys; print('x' * 500 + 'THE-END'); sys.exit(3)"
    backend = make_backend(tmp_path, argv=[PY, "-c", child], success_codes=[0, 3], tail=20)
    result = await backend.dispatch(make_ctx(), FakeJob())
    assert result.exit_code == 3
    assert result.detail is not None and result.detail.endswith("xTHE-END")
    assert "x" * 21 not in result.detail


async def test_killed_by_signal(tmp_path: Path) -> None:
    child = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    backend = make_backend(tmp_path, argv=[PY, "-c", child])
    with pytest.raises(TransientDispatchError) as info:
        await backend.dispatch(make_ctx(), FakeJob())
    assert info.value.exit_code == -signal.SIGKILL
    assert info.value.detail.startswith("killed by SIGKILL")


async def test_command_not_found_is_permanent(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, argv=["trian-no-such-program", "--fast"])
    job = FakeJob()
    with pytest.raises(PermanentDispatchError) as info:
        await backend.dispatch(make_ctx(), job)
    assert info.value.detail == ("command not found: 'trian-no-such-program' (argv[0]); "
                                 "check backends.train.argv")
    assert job.external_ids == []


async def test_not_executable_is_permanent(tmp_path: Path) -> None:
    program = tmp_path / "train.sh"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o644)
    backend = make_backend(tmp_path, argv=[str(program)])
    with pytest.raises(PermanentDispatchError) as info:
        await backend.dispatch(make_ctx(), FakeJob())
    assert "not executable" in info.value.detail and str(program) in info.value.detail


async def test_missing_workdir_is_permanent(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, argv=[PY, "-c", "pass"],
                           workdir=str(tmp_path / "runs" / "{params.model}"))
    with pytest.raises(PermanentDispatchError) as info:
        await backend.dispatch(make_ctx(), FakeJob())
    assert "workdir does not exist" in info.value.detail
    assert str(tmp_path / "runs" / "resnet") in info.value.detail


async def test_missing_template_value_is_permanent_and_names_the_field(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, argv=[PY, "-c", "pass", "{params.epochs}"])
    with pytest.raises(PermanentDispatchError) as info:
        await backend.dispatch(make_ctx(), FakeJob())
    assert "argv[3]" in info.value.detail and "params.epochs" in info.value.detail

    backend = make_backend(tmp_path, argv=[PY, "-c", "pass"],
                           env={"API_TOKEN": "s3cret-{params.region}"})
    with pytest.raises(PermanentDispatchError) as info:
        await backend.dispatch(make_ctx(), FakeJob())
    assert "env.API_TOKEN" in info.value.detail and "params.region" in info.value.detail
    assert "s3cret" not in info.value.detail


async def test_output_is_capped_and_child_never_blocks(tmp_path: Path) -> None:
    child = script("""
        import sys
        block = b"y" * 65536 + b"\\n"
        for _ in range(80):  # ~5 MB
            sys.stdout.buffer.write(block)
        sys.stdout.buffer.write(b"LAST-LINE\\n")
    """)
    backend = make_backend(tmp_path, argv=[PY, "-c", child], output_limit="64KiB", tail=50,
                           timeout="20s")
    result = await asyncio.wait_for(backend.dispatch(make_ctx(), FakeJob()), 15)
    log_file = tmp_path / "state" / "jobs" / "retrain.7" / "output.log"
    assert log_file.stat().st_size == 64 * 1024
    assert result.exit_code == 0
    assert result.detail is not None
    assert "output truncated" in result.detail
    assert str(80 * 65537 + 10 - 65536) in result.detail  # the dropped bytes are counted
    assert result.detail.endswith("LAST-LINE")


async def test_output_file_that_cannot_be_created_still_runs_the_job(tmp_path: Path) -> None:
    """output.log is opened after the spawn: a failure there must not orphan the child."""
    marker = tmp_path / "ran"
    job_dir = tmp_path / "state" / "jobs" / "retrain.7"
    (job_dir / "output.log").mkdir(parents=True)  # opening it for writing fails
    backend = make_backend(tmp_path, argv=[PY, "-c", literal(script("""
        import pathlib, sys
        print(" ".join(["a line of output"] * 20000))
        pathlib.Path(sys.argv[1]).write_text("x")
    """)), str(marker)], tail=40)
    result = await asyncio.wait_for(backend.dispatch(make_ctx(), FakeJob()), 15)
    assert marker.exists() and result.exit_code == 0
    assert result.detail is not None
    assert "output.log could not be opened" in result.detail
    assert "output truncated" not in result.detail
    assert result.detail.endswith("a line of output")  # the tail is still kept
    assert (job_dir / "output.log").is_dir() and (job_dir / "trigger.json").is_file()


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    grandchild_pid = tmp_path / "grandchild.pid"
    backend = make_backend(tmp_path, argv=[PY, "-c", PARENT, SLEEPER, str(grandchild_pid)],
                           timeout="500ms", kill_grace="3s")
    job = FakeJob()
    task = asyncio.create_task(backend.dispatch(make_ctx(), job))
    try:
        await wait_until(lambda: read_pid(grandchild_pid) is not None)
        with pytest.raises(TransientDispatchError) as info:
            await asyncio.wait_for(task, 10)
    finally:
        pid = read_pid(grandchild_pid)
    assert pid is not None
    try:
        await wait_until(lambda: not pid_alive(pid))
    finally:
        kill_quietly(pid)
    assert info.value.detail.startswith("timed out after 500ms; killed process group")
    assert info.value.exit_code == -signal.SIGTERM
    assert not pid_alive(int(job.external_ids[0].removeprefix("pid:")))


@pytest.mark.parametrize("who_ignores", ["child", "grandchild"])
async def test_sigterm_ignored_gets_sigkill_after_grace(tmp_path: Path, who_ignores: str) -> None:
    pid_file = tmp_path / "ignorer.pid"
    if who_ignores == "child":
        argv = [PY, "-c", SLEEPER, str(pid_file), "ignore-term"]
    else:
        argv = [PY, "-c", PARENT, SLEEPER, str(pid_file), "ignore-term"]
    backend = make_backend(tmp_path, argv=argv, timeout="1s", kill_grace="500ms")
    started = time.monotonic()
    task = asyncio.create_task(backend.dispatch(make_ctx(), FakeJob()))
    try:
        await wait_until(lambda: read_pid(pid_file) is not None)
        with pytest.raises(TransientDispatchError) as info:
            await asyncio.wait_for(task, 10)
        elapsed = time.monotonic() - started
    finally:
        pid = read_pid(pid_file)
    assert pid is not None
    try:
        await wait_until(lambda: not pid_alive(pid))
    finally:
        kill_quietly(pid)
    assert elapsed >= 1.4  # timeout + grace: SIGTERM alone did not end the group
    assert info.value.detail.startswith("timed out after 1s; killed process group")
    expected = -signal.SIGKILL if who_ignores == "child" else -signal.SIGTERM
    assert info.value.exit_code == expected


async def test_background_process_holding_output_does_not_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command, "_DRAIN_AFTER_EXIT", 0.2)
    pid_file = tmp_path / "bg.pid"
    child = script("""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
        while True:  # exit once the background process is up
            try:
                open(sys.argv[2]).close()
                break
            except FileNotFoundError:
                time.sleep(0.01)
        print("submitted")
    """)
    backend = make_backend(tmp_path, argv=[PY, "-c", child, SLEEPER, str(pid_file)])
    try:
        result = await asyncio.wait_for(backend.dispatch(make_ctx(), FakeJob()), 10)
        assert result.exit_code == 0
        assert result.detail is not None and "still holds the output open" in result.detail
        assert "submitted" in result.detail
    finally:
        pid = read_pid(pid_file)
        if pid is not None:
            kill_quietly(pid)
    await wait_until(lambda: not backend._background)


async def test_cancellation_leaves_the_child_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    backend = make_backend(tmp_path, argv=[PY, "-c", SLEEPER, str(pid_file)], timeout="1h")
    job = FakeJob()
    task = asyncio.create_task(backend.dispatch(make_ctx(), job))
    await wait_until(lambda: read_pid(pid_file) is not None)
    pid = read_pid(pid_file)
    assert pid is not None
    try:
        assert job.external_ids == [f"pid:{pid}"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pid_alive(pid)
    finally:
        kill_quietly(pid)
    await wait_until(lambda: not backend._background)


async def test_cancelled_while_spawning_the_child_is_still_followed(tmp_path: Path) -> None:
    """A stop that lands while the worker thread is starting the child (the dispatch is
    cancelled, the spawn goes on): the child runs, its output is still captured and it is
    reaped, as for a child cancelled later."""
    marker = tmp_path / "ran"
    backend = make_backend(tmp_path, argv=[PY, "-c", literal(script("""
        import sys, pathlib
        print("late child output")
        pathlib.Path(sys.argv[1]).write_text("x")
    """)), str(marker)])
    task = asyncio.create_task(backend.dispatch(make_ctx(), FakeJob()))
    await asyncio.sleep(0)  # the dispatch is now waiting on the worker thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    output = tmp_path / "state" / "jobs" / "retrain.7" / "output.log"
    await wait_until(lambda: marker.exists() and b"late child output" in output.read_bytes())
    await wait_until(lambda: not backend._background)  # followed to its exit, then reaped


async def test_hostile_trigger_id_stays_inside_the_jobs_dir(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, argv=[PY, "-c", "pass"])
    await backend.dispatch(make_ctx(trigger_id="../../etc/x y"), FakeJob())
    jobs = tmp_path / "state" / "jobs"
    (job_dir,) = jobs.iterdir()
    assert job_dir.name.startswith("_.._etc_x_y-")
    assert (job_dir / "trigger.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


async def test_dispatch_follows_what_the_dispatcher_launched(tmp_path: Path) -> None:
    """The dispatcher runs `launch` on its store thread and hands the outcome over in
    `job.launched`: dispatch then starts nothing itself, it follows that child."""
    backend = make_backend(tmp_path, argv=[PY, "-c", "import os; print('pid', os.getpid())"])
    launched: Future[Any] = Future()
    launched.set_result(backend.launch(make_ctx(), 1))  # blocking, as on the store thread
    job = FakeJob(launched=launched)
    result = await asyncio.wait_for(backend.dispatch(make_ctx(), job), 15)
    pid = launched.result().child.pid
    assert result.exit_code == 0 and result.external_id == f"pid:{pid}"
    assert job.external_ids == [f"pid:{pid}"]
    assert result.detail == f"pid {pid}"  # this child's output, not a second one's
    assert (tmp_path / "state" / "jobs" / "retrain.7" / "output.log").read_text() == \
        f"pid {pid}\n"

    failed: Future[Any] = Future()
    with pytest.raises(PermanentDispatchError, match="command not found") as info:
        make_backend(tmp_path, argv=["no-such-program-xyz"]).launch(make_ctx(), 1)
    failed.set_exception(info.value)
    with pytest.raises(PermanentDispatchError, match="command not found"):
        await backend.dispatch(make_ctx(), FakeJob(launched=failed))


# -- secrets named for other components (the config names secrets by variable) -------
SECRETS_CONFIG = """
store: postgresql+psycopg://svc:${API_DB_PASSWORD}@db.internal/triggerd
sources:
  events:
    type: kafka
    brokers: ["127.0.0.1:9092"]
    topic: metrics
    security: {protocol: SASL_SSL, mechanism: SCRAM-SHA-512, username: svc,
               password_env: API_KAFKA_PASSWORD}
backends:
  hook:
    type: http
    url: http://127.0.0.1:9/hook
    secret_env: API_HOOK_SECRET
    headers: {Authorization: {env: API_HOOK_TOKEN, prefix: "Bearer "}}
  airflow:
    type: airflow
    url: http://127.0.0.1:9
    dag_id: retrain
    token_env: API_AIRFLOW_TOKEN
  train:
    type: command
    argv: [@PYTHON@, -c, @REPORT@, @SEEN@]
    env: {@OWN_ENV@}
rules:
  r: {on: [events], dispatch: {backend: train}}
"""
SECRETS = {"API_KAFKA_PASSWORD": "kafka-pw", "API_HOOK_SECRET": "hook-secret",
           "API_HOOK_TOKEN": "hook-token", "API_AIRFLOW_TOKEN": "airflow-token",
           "API_AIRFLOW_TOKEN_FILE": "/run/secrets/airflow",  # `<NAME>_FILE`: the secret's file
           # the daemon's own: the store's password, alone and in the store's URL
           "TRIGGERD_STORE_PASSWORD": "pg-pw", "API_DB_PASSWORD": "db-pw",
           "TRIGGERD_STORE": "postgresql+psycopg://svc:pg-pw@db.internal/triggerd"}


async def _env_seen_by_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           own_env: str) -> dict[str, str]:
    """Load a config naming secrets for a Kafka source and http/airflow backends, run its
    command backend with those secrets in the daemon's environment, return the job's env."""
    for name, value in {**SECRETS, "INHERITED_VAR": "from-daemon"}.items():
        monkeypatch.setenv(name, value)
    seen_file = tmp_path / "seen.json"
    path = tmp_path / "triggerd.yaml"
    text = SECRETS_CONFIG
    for marker, value in (("@PYTHON@", json.dumps(PY)), ("@REPORT@", json.dumps(literal(REPORT))),
                          ("@SEEN@", json.dumps(str(seen_file))), ("@OWN_ENV@", own_env)):
        text = text.replace(marker, value)
    path.write_text(text)
    config = load_config(path, dict(os.environ))
    options = config.backends["train"]
    assert isinstance(options, CommandOptions)
    await CommandBackend("train", options, tmp_path / "state").dispatch(make_ctx(), FakeJob())
    env: dict[str, str] = json.loads(seen_file.read_text())["env"]
    return env


async def test_secrets_named_for_other_components_are_not_inherited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = await _env_seen_by_job(tmp_path, monkeypatch, own_env="MODEL_NAME: churn")
    assert not set(SECRETS) & set(env)
    assert env["INHERITED_VAR"] == "from-daemon"  # the rest of the environment still is
    assert env["MODEL_NAME"] == "churn"


async def test_a_secret_passed_on_by_the_commands_own_env_is_visible(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = await _env_seen_by_job(
        tmp_path, monkeypatch,
        own_env='API_KAFKA_PASSWORD: "${API_KAFKA_PASSWORD}", API_TOKEN: "${API_HOOK_TOKEN}"')
    assert env["API_KAFKA_PASSWORD"] == "kafka-pw"
    assert env["API_TOKEN"] == "hook-token"  # passed on under another name
    assert not {"API_HOOK_SECRET", "API_HOOK_TOKEN", "API_AIRFLOW_TOKEN"} & set(env)


def test_withheld_names_are_not_an_option(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        CommandOptions.model_validate({"type": "command", "argv": ["x"],
                                       "_withheld_env": ["PATH"]})
    with pytest.raises(ValidationError):
        CommandOptions.model_validate({"type": "command", "argv": ["x"],
                                       "withheld_env": ["PATH"]})
