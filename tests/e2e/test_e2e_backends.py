"""`kill -9` of the real daemon while a job is running on the http and kubernetes backends:
after a restart the job is resumed (http: the same Idempotency-Key, the receiver acts once) or
reattached (kubernetes: the create answers AlreadyExists, the daemon follows the same Job),
and it ends `succeeded` with one side effect."""

from __future__ import annotations

import signal
from typing import Any

from harness import Triggerd, wait_for
from kube_server import KubeApi
from webhook_server import Webhook

from triggerd.backends.kubernetes import job_name
from triggerd.store import queries


def job_of(td: Triggerd) -> dict[str, Any] | None:
    """The rule's job as `triggerd jobs --json` shows it (read from the store: polling
    through the CLI costs seconds a call on a busy machine)."""
    if not (td.root / "state" / "state.db").exists():
        return None
    store = td.store()
    try:
        jobs = queries.list_jobs(store)
    finally:
        store.close()
    return jobs[0].to_dict() if jobs else None


def crash_while_running(td: Triggerd, started: Any) -> None:
    """Start the daemon, fire rule r, wait until the job runs and `started()` holds, kill -9,
    and start the daemon again."""
    proc = td.start(log="first.log")
    td.wait_running(proc)
    assert td.cli("fire", "r").returncode == 0
    wait_for(lambda: started() and (j := job_of(td)) and j["status"] == "running", 30,
             "the job to be running")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    again = td.start()
    td.wait_running(again)


def test_http_job_running_at_kill_9_is_resumed_with_the_same_key(td: Triggerd,
                                                                  hook: Webhook) -> None:
    hook.script = ["act-then-hang"]  # the receiver acts, the daemon dies awaiting the answer
    td.env["HOOK_SECRET"] = "s3cret-value"
    td.write(f"""
        state_dir: state
        sources:
          tick: {{type: cron, schedule: "0 0 1 1 *"}}
        backends:
          ci: {{type: http, url: "{hook.url}", secret_env: HOOK_SECRET}}
        rules:
          r:
            on: [tick]
            dispatch: {{backend: ci}}
    """)
    crash_while_running(td, lambda: hook.received)
    job = wait_for(lambda: (j := job_of(td)) and j["status"] == "succeeded" and j, 30,
                   "the resumed job to succeed")
    assert hook.keys() == ["r.1", "r.1"] and hook.effects == ["r.1"]  # one side effect
    assert (job["attempts"], job["exit_code"], job["external_id"]) == (2, 201, "run-2")
    assert td.json("jobs") == [job]  # what `triggerd jobs` shows
    assert "job r.1: resuming dispatch after restart" in td.log()
    assert "s3cret-value" not in td.log() + td.log("first.log")


def test_kubernetes_job_running_at_kill_9_is_reattached(td: Triggerd, kube: KubeApi) -> None:
    kubeconfig = kube.kubeconfig(td.root / "kubeconfig")
    td.write(f"""
        state_dir: state
        sources:
          tick: {{type: cron, schedule: "0 0 1 1 *"}}
        backends:
          k8s:
            type: kubernetes
            kubeconfig: {kubeconfig}
            wait: true
            poll: 100ms
            manifest:
              apiVersion: batch/v1
              kind: Job
              spec:
                template:
                  spec:
                    restartPolicy: Never
                    containers: [{{name: train, image: "train:{{params.tag}}"}}]
        rules:
          r:
            on: [tick]
            dispatch: {{backend: k8s, params: {{tag: v2}}}}
    """)
    crash_while_running(td, lambda: kube.creates)
    name = job_name("r", "r.1")
    # the restarted daemon tries to create the Job again, is told it exists, and follows it
    wait_for(lambda: kube.requests.count(("POST", "/apis/batch/v1/namespaces/ml/jobs")) == 2,
             30, "the second create (409)")
    wait_for(lambda: "Job ml/" + name + " exists, reattaching" in td.log(), 30, "reattaching")
    assert job_of(td)["status"] == "running"  # type: ignore[index]
    kube.finish(name, "Complete")
    job = wait_for(lambda: (j := job_of(td)) and j["status"] == "succeeded" and j, 30,
                   "the reattached job to succeed")
    assert len(kube.creates) == 1  # one Job for the trigger
    assert kube.creates[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "train:v2"
    assert job["external_id"] == f"ml/{name}" and job["attempts"] == 2
    assert "reattached" in job["detail"]


def test_a_missing_secret_stops_the_start_with_a_config_error(td: Triggerd) -> None:
    td.write("""
        state_dir: state
        sources:
          tick: {type: cron, schedule: "0 0 1 1 *"}
        backends:
          ci: {type: http, url: "http://127.0.0.1:9/hook", secret_env: TRIGGERD_TEST_NO_SECRET}
        rules:
          r: {on: [tick], dispatch: {backend: ci}}
    """)
    res = td.cli("run", timeout=60)
    assert res.returncode == 2
    assert "backends.ci.secret_env: environment variable TRIGGERD_TEST_NO_SECRET is not set" \
        in res.stderr
    assert "triggerd started" not in res.stderr
