"""The `kubernetes` backend: create a batch/v1 Job per trigger; optionally wait for it.

Contract (see `triggerd.interfaces.Backend`):

- The manifest is a Job (`apiVersion: batch/v1`, `kind: Job`), inline (`manifest:`) or in a
  YAML file (`manifest_file:`, read when the backend is built; relative to the daemon's cwd).
  It is parsed once and then handled as data: string values may hold `{params.*}`,
  `{trigger_id}`, `{rule}`, `{group}` and `{fired_at}` fields, each rendered on its own, as a
  string, into the parsed object (a literal brace is written `{{` / `}}`). Event values never
  go into the manifest: every container of the pod template gets `TRIGGERD_TRIGGER_ID`,
  `TRIGGERD_RULE` and `TRIGGERD_CONTEXT` (the trigger context as JSON; when it exceeds
  `context_limit` bytes, the last events are left out and `events_omitted` says how many).
- Name: `job_name(rule, trigger_id)`, deterministic, a DNS-1123 label of at most 63 characters
  (the sanitised trigger id plus a hash of the exact rule and id, so distinct triggers never
  share a name). `generateName` is refused. Labels carry the rule and trigger (sanitised to
  label values), annotations carry them exactly (`triggerd.io/rule`, `triggerd.io/trigger-id`),
  on the Job and its pod template.
- Idempotency: creating a Job that exists answers 409 AlreadyExists; when the existing Job's
  `triggerd.io/trigger-id` annotation is this trigger, that is success and the attempt
  reattaches to it (a retry, or a restart after a crash); another Job of that name fails the
  job. A Job removed after it finished (`ttlSecondsAfterFinished`) cannot be recognised: keep
  that TTL longer than any daemon downtime.
- `wait: true` polls the Job every `poll` until its `Complete` (succeeded) or `Failed` (failed,
  permanently: the Job's own `backoffLimit` already retried the pods) condition. API errors
  while polling are logged and polling goes on; a Job deleted meanwhile fails the job.
- Errors: 408, 429 and 5xx from the API (with `Retry-After`, read as RFC 9110 says and capped
  at an hour), connection errors (also a reset mid-body) and timeouts are transient; other
  API errors (401, 403, 422 invalid manifest, a 3xx: the client follows no redirect, ...)
  fail at once with the API's message. A 200 whose body is not a JSON Job object (garbage,
  a list, over 1 MiB) is transient: while waiting, polling goes on. A 201 to the create
  needs no body: the Job is ours by its name, so nothing after it can create it twice.
  `external_id` is `<namespace>/<job name>`.
- Client: the official `kubernetes` package (extra `kubernetes`), synchronous, so each call
  runs in a thread. Configuration: `kubeconfig` (a path; default `$KUBECONFIG` or
  `~/.kube/config`) and `context`, or the pod's service account when running in a cluster
  (`in_cluster`, default: when `KUBERNETES_SERVICE_HOST` is set and no `kubeconfig` is
  given). Namespace: `namespace`, else the manifest's, else the context's, else `default`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from kubernetes import client as k8s
from kubernetes import config as _k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import Field, model_validator
from urllib3.exceptions import HTTPError as Urllib3Error  # after kubernetes: its dependency

from triggerd.backends._common import (
    MAX_RESPONSE,
    DataTemplate,
    loads_json,
    render_or_fail,
    retry_after,
)
from triggerd.plugin import (
    ConfigError,
    DispatchError,
    DispatchResult,
    Duration,
    FileTooLargeError,
    JobHandle,
    PermanentDispatchError,
    Size,
    Strict,
    TransientDispatchError,
    TriggerContext,
    load_yaml_file,
)

log = logging.getLogger(__name__)
k8s_config: Any = _k8s_config  # its loaders are untyped

MANIFEST_FIELDS = ("trigger_id", "rule", "group", "fired_at")
ANNOTATION_RULE = "triggerd.io/rule"
ANNOTATION_TRIGGER = "triggerd.io/trigger-id"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def job_name(rule: str, trigger_id: str) -> str:
    """A valid DNS-1123 label (<= 63), deterministic in (rule, trigger id) and distinct for
    distinct pairs: the readable, sanitised id, cut to fit, plus a hash of the exact pair."""
    digest = hashlib.blake2b(f"{rule}\0{trigger_id}".encode("utf-8", "surrogateescape"),
                             digest_size=5).hexdigest()
    stem = re.sub(r"[^a-z0-9]+", "-", trigger_id.lower()).strip("-")[:52].rstrip("-")
    return f"{stem or 'triggerd'}-{digest}"


def label_value(value: str) -> str:
    """`value` when it is a valid label value, else a sanitised, hashed one."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    digest = hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=5)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:52].strip("-_.")
    return f"{stem}-{digest.hexdigest()}" if stem else digest.hexdigest()


def _allowed(field: str) -> bool:
    return field in MANIFEST_FIELDS or field.startswith("params.")


class KubernetesOptions(Strict):
    type: Literal["kubernetes"]
    """Creates a Job named from the rule and trigger id (a retry finds it: one Job per trigger)."""
    manifest: dict[str, Any] | None = Field(None, description="the Job manifest, inline")
    manifest_file: str | None = Field(None, description="a YAML file holding the Job manifest")
    namespace: str | None = None
    """Default: the manifest's, else the kubeconfig context's (or the pod's), else `default`."""
    kubeconfig: str | None = None
    """A kubeconfig file; default: ~/.kube/config, unless running in the cluster."""
    context: str | None = None
    """The kubeconfig context to use."""
    in_cluster: bool | None = None
    """Use the pod's service account (true) or a kubeconfig (false); default: in the cluster
    when KUBERNETES_SERVICE_HOST is set and no `kubeconfig` is given."""
    wait: bool = False
    """Follow the Job to completion or failure."""
    poll: Duration = timedelta(seconds=5)
    request_timeout: Duration = timedelta(seconds=30)
    context_limit: Annotated[Size, Field(ge=1024)] = 256 * 1024

    @model_validator(mode="after")
    def _checked(self) -> KubernetesOptions:
        if (self.manifest is None) == (self.manifest_file is None):
            raise ValueError("set exactly one of manifest (inline) and manifest_file")
        if self.manifest is not None:
            check_manifest(self.manifest)
        return self

    def load_manifest(self) -> dict[str, Any]:
        if self.manifest is not None:
            return self.manifest
        assert self.manifest_file is not None  # noqa: S101 - the validator ensures it
        try:
            data = load_yaml_file(Path(self.manifest_file))  # an alias bomb cannot explode
        except (OSError, UnicodeDecodeError, FileTooLargeError, yaml.YAMLError) as exc:
            raise ValueError(f"manifest_file {self.manifest_file}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"manifest_file {self.manifest_file}: not a YAML mapping")
        check_manifest(data)
        return data


def check_manifest(manifest: dict[str, Any]) -> DataTemplate:
    """Refuse what cannot work before anything runs; returns the compiled template."""
    if manifest.get("apiVersion") != "batch/v1" or manifest.get("kind") != "Job":
        raise ValueError("manifest must be a Job: apiVersion: batch/v1, kind: Job")
    meta = manifest.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("manifest metadata must be a mapping")
    if "generateName" in meta or "name" in meta:
        raise ValueError("manifest metadata must not set name or generateName: triggerd "
                         "names the Job after the rule and trigger (its idempotency key)")
    containers = (((manifest.get("spec") or {}).get("template") or {}).get("spec") or {}) \
        .get("containers")
    if not isinstance(containers, list) or not containers:
        raise ValueError("manifest needs spec.template.spec.containers")
    return DataTemplate(manifest, typed=False, allowed=_allowed)


class KubernetesBackend:
    """Creates one Job per trigger; see the module docstring for the contract."""

    Options = KubernetesOptions

    def __init__(self, name: str, options: KubernetesOptions, state_dir: Any = None) -> None:
        self.name = name
        self.options = options
        try:
            manifest = options.load_manifest()
        except ValueError as exc:
            raise ConfigError([f"backends.{name}: {exc}"]) from None
        self._template = check_manifest(manifest)
        self._manifest_ns = (manifest.get("metadata") or {}).get("namespace")
        self._api: k8s.BatchV1Api | None = None
        self._default_ns = "default"
        self._lock = asyncio.Lock()

    # -- client ---------------------------------------------------------------------------------
    async def _client(self) -> k8s.BatchV1Api:
        async with self._lock:
            if self._api is not None:
                return self._api
            try:
                api, self._default_ns = await asyncio.to_thread(self._connect)
            except (ConfigException, OSError) as exc:
                raise PermanentDispatchError(
                    f"cannot configure the Kubernetes client: {exc}; check "
                    f"backends.{self.name}.kubeconfig / context") from exc
            self._api = api
            return api

    def _connect(self) -> tuple[k8s.BatchV1Api, str]:
        o = self.options
        in_cluster = o.in_cluster if o.in_cluster is not None else \
            (o.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ)
        configuration = k8s.Configuration()
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)
            ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
        else:
            k8s_config.load_kube_config(config_file=o.kubeconfig, context=o.context,
                                        client_configuration=configuration)
            contexts, current = k8s_config.list_kube_config_contexts(config_file=o.kubeconfig)
            if o.context is not None:
                current = next((c for c in contexts if c.get("name") == o.context), current)
            namespace = (current or {}).get("context", {}).get("namespace") or "default"
        return k8s.BatchV1Api(k8s.ApiClient(configuration)), namespace

    # -- dispatch -------------------------------------------------------------------------------
    async def dispatch(self, ctx: TriggerContext, job: JobHandle) -> DispatchResult:
        api = await self._client()
        namespace = self.options.namespace or self._manifest_ns or self._default_ns
        name = job_name(ctx.rule, ctx.trigger_id)
        manifest = self.build(ctx, namespace)
        external_id = f"{namespace}/{name}"
        timeout = self.options.request_timeout.total_seconds()
        try:
            await asyncio.to_thread(api.create_namespaced_job, namespace, cast(Any, manifest),
                                    _preload_content=False, _request_timeout=timeout)
            created = True
        except ApiException as exc:
            if exc.status != 409:
                raise self._api_error(exc, f"creating Job {external_id}") from exc
            created = False
        except (Urllib3Error, OSError) as exc:
            raise _connection_error(exc, f"creating Job {external_id}") from exc
        await job.set_external_id(external_id)
        if not created:
            existing = await self._read(api, name, namespace)
            if existing is None:
                raise TransientDispatchError(
                    f"Job {external_id} answered AlreadyExists but cannot be read",
                    external_id=external_id)
            annotations = (existing.get("metadata") or {}).get("annotations")
            owner = annotations.get(ANNOTATION_TRIGGER) \
                if isinstance(annotations, dict) else None
            if owner != ctx.trigger_id:
                raise PermanentDispatchError(
                    f"a Job named {external_id} exists but was not created for trigger "
                    f"{ctx.trigger_id} (its {ANNOTATION_TRIGGER}: {owner!r})",
                    external_id=external_id)
            log.info("backend %s: trigger %s: Job %s exists, reattaching", self.name,
                     ctx.trigger_id, external_id)
        else:
            log.info("backend %s: trigger %s: created Job %s", self.name, ctx.trigger_id,
                     external_id)
        verb = "created" if created else "already existed (reattached)"
        if not self.options.wait:
            return DispatchResult(external_id=external_id, detail=f"Job {external_id} {verb}")
        return await self._wait(api, name, namespace, external_id, verb)

    def build(self, ctx: TriggerContext, namespace: str) -> dict[str, Any]:
        """The Job object for a trigger (pure: values go in as data, never as YAML text)."""
        values = {"trigger_id": ctx.trigger_id, "rule": ctx.rule, "group": ctx.group,
                  "fired_at": ctx.fired_at.isoformat(), "params": ctx.params}
        manifest: dict[str, Any] = render_or_fail(self._template, values,
                                                  f"manifest of backends.{self.name}")
        labels = {"app.kubernetes.io/managed-by": "triggerd",
                  ANNOTATION_RULE: label_value(ctx.rule),
                  "triggerd.io/trigger": label_value(ctx.trigger_id)}
        annotations = {ANNOTATION_RULE: ctx.rule, ANNOTATION_TRIGGER: ctx.trigger_id}
        meta = manifest.setdefault("metadata", {})
        meta.update(name=job_name(ctx.rule, ctx.trigger_id), namespace=namespace)
        template = manifest["spec"]["template"]
        for m in (meta, template.setdefault("metadata", {})):
            m["labels"] = {**(m.get("labels") or {}), **labels}
            m["annotations"] = {**(m.get("annotations") or {}), **annotations}
        env = [{"name": "TRIGGERD_TRIGGER_ID", "value": ctx.trigger_id},
               {"name": "TRIGGERD_RULE", "value": ctx.rule},
               {"name": "TRIGGERD_CONTEXT", "value": self._context_json(ctx)}]
        ours = {e["name"] for e in env}
        for container in template["spec"]["containers"]:
            kept = [e for e in container.get("env") or [] if e.get("name") not in ours]
            container["env"] = kept + env
        return manifest

    def _context_json(self, ctx: TriggerContext) -> str:
        data = ctx.to_dict()
        text = json.dumps(data, sort_keys=True, default=str)
        events = list(data["events"])
        keep = len(events)
        while len(text.encode()) > self.options.context_limit and keep > 0:
            keep //= 2
            data = {**data, "events": events[:keep], "events_omitted": len(events) - keep}
            text = json.dumps(data, sort_keys=True, default=str)
        return text

    async def _read(self, api: k8s.BatchV1Api, name: str, namespace: str
                    ) -> dict[str, Any] | None:
        """The Job as JSON, or None when it does not exist."""
        timeout = self.options.request_timeout.total_seconds()
        doing = f"reading Job {namespace}/{name}"

        def read() -> bytes:  # the call and its body, on a thread; at most MAX_RESPONSE + 1
            resp: Any = api.read_namespaced_job_status(
                name, namespace, _preload_content=False, _request_timeout=timeout)
            try:
                data: bytes = resp.read(MAX_RESPONSE + 1)
            finally:
                resp.release_conn()
            return data

        try:
            data = await asyncio.to_thread(read)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._api_error(exc, doing) from exc
        except (Urllib3Error, OSError) as exc:
            raise _connection_error(exc, doing) from exc
        found = loads_json(data) if len(data) <= MAX_RESPONSE else None
        if not isinstance(found, dict) or not isinstance(found.get("metadata", {}), dict) \
                or not isinstance(found.get("status", {}), dict):
            what = "too large" if len(data) > MAX_RESPONSE else "not a JSON Job object"
            raise TransientDispatchError(
                f"{doing}: the API answered 200 with a body that is {what}: "
                f"{data[:200].decode('utf-8', 'replace')!r}")
        return found

    async def _wait(self, api: k8s.BatchV1Api, name: str, namespace: str, external_id: str,
                    verb: str) -> DispatchResult:
        poll = self.options.poll.total_seconds()
        while True:
            try:
                found = await self._read(api, name, namespace)
            except TransientDispatchError as exc:
                log.warning("backend %s: Job %s: %s; still waiting", self.name, external_id,
                            exc.detail)
                await asyncio.sleep(poll)
                continue
            if found is None:
                raise PermanentDispatchError(f"Job {external_id} was deleted while triggerd "
                                             "waited for it", external_id=external_id)
            status = found.get("status") or {}
            conditions = status.get("conditions")
            for cond in conditions if isinstance(conditions, list) else []:
                if not isinstance(cond, dict) or cond.get("status") != "True" \
                        or cond.get("type") not in ("Complete", "Failed"):
                    continue
                counts = f"succeeded {status.get('succeeded', 0)}, " \
                         f"failed {status.get('failed', 0)}"
                if cond["type"] == "Complete":
                    return DispatchResult(external_id=external_id,
                                          detail=f"Job {external_id} {verb}; complete "
                                                 f"({counts})")
                why = ": ".join(str(x)[:500] for x in (cond.get("reason"), cond.get("message"))
                                if x)
                raise PermanentDispatchError(f"Job {external_id} failed: {why} ({counts})",
                                             external_id=external_id)
            await asyncio.sleep(poll)

    def _api_error(self, exc: ApiException, doing: str) -> DispatchError:
        message = str(exc.reason or "")
        raw = exc.body if isinstance(exc.body, bytes | str) else b""
        body = loads_json(raw.encode() if isinstance(raw, str) else raw)
        if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
            message = body["message"]
        elif not message and raw:
            message = (raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))[:300]
        detail = f"{doing}: HTTP {exc.status}: {message}"[:2000]
        status = exc.status if isinstance(exc.status, int) else 0
        if status in (408, 429) or status >= 500:
            headers: Any = exc.headers if hasattr(exc.headers, "get") else {}
            hint = retry_after(headers.get("Retry-After"))
            return TransientDispatchError(detail, exit_code=exc.status, retry_after=hint)
        return PermanentDispatchError(detail + f"; check backends.{self.name}",
                                      exit_code=exc.status)


def _connection_error(exc: Exception, doing: str) -> DispatchError:
    """urllib3 and socket errors of the client: transient (the API may come back)."""
    reason = getattr(exc, "reason", None) or exc
    text = re.sub(r"https?://\S+", "<api server>", str(reason))[:500]
    return TransientDispatchError(f"{doing}: {type(exc).__name__}: {text}")
