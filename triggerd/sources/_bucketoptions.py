"""The options of a `type: bucket` source (an object-store prefix), checked when the config is
loaded: the URL's scheme and its extra installed, globs compiled, `poll` within bounds. The
source itself: `triggerd.sources.bucket`.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from triggerd.plugin import Duration, Strict
from triggerd.sources._fsoptions import valid_globs

__all__ = ["SCHEMES", "BucketOptions", "Kind", "Store"]

Kind = Literal["created", "modified", "deleted"]


class Store:
    """What a URL scheme needs: the fsspec protocol, the package and the extra that has it."""

    def __init__(self, protocol: str, package: str, extra: str) -> None:
        self.protocol, self.package, self.extra = protocol, package, extra


SCHEMES = {
    "s3": Store("s3", "s3fs", "s3"),
    "gs": Store("gcs", "gcsfs", "gcs"),
    "gcs": Store("gcs", "gcsfs", "gcs"),
    "az": Store("abfs", "adlfs", "azure"),
    "abfs": Store("abfs", "adlfs", "azure"),
}


def _default_events() -> list[Kind]:
    return ["created", "modified"]


class Credentials(Strict):
    """Names of environment variables holding the credentials (their values are never
    written in the config, and never logged). Unset: the library's own chain (environment,
    profile, instance or workload identity)."""

    key: str | None = None  # S3: access key id; Azure: account name
    """S3: the access key id's variable; Azure: the account name's."""
    secret: str | None = None  # S3: secret access key; Azure: account key
    """S3: the secret access key's variable; Azure: the account key's."""
    token: str | None = None  # S3: session token; GCS: a service-account JSON file's path
    """S3: the session token's variable; GCS: the variable holding a service-account JSON file's
    path."""


class BucketOptions(Strict):
    """Options of a `type: bucket` source: objects landing under a prefix of a bucket."""

    type: Literal["bucket"]
    """Objects landing under a prefix of an object store (S3, GCS, Azure Blob), found by listing."""
    url: str = Field(description="s3://bucket/prefix/, gs://bucket/prefix/ or "
                                 "az://container/prefix/ (abfs:// too)")
    poll: Duration = Field(description="the listing interval (an object store sends no "
                                       "notifications of its own)")
    patterns: list[str] = Field(default_factory=lambda: ["**/*"])
    """An object is watched when its key relative to the prefix matches one of these."""
    ignore: list[str] = Field(default_factory=list)
    """Globs of keys (relative to the prefix) to skip, on top of the editor and partial-upload
    defaults."""
    events: list[Kind] = Field(default_factory=_default_events, min_length=1)
    """The kinds to emit: created, modified, deleted."""
    fingerprint: Literal["etag", "stat"] = "etag"
    """etag: the content tag (S3 ETag, GCS md5Hash, Azure ETag; the version id where there is
    no tag); stat: size and last-modified."""
    settle: bool = True
    """Emit an object once two listings in a row saw it unchanged (else at first sight)."""
    listing: Literal["full", "new_keys"] = "full"
    """full: every listing lists the whole prefix. new_keys: a listing asks only for the keys
    after the greatest key seen (S3's StartAfter), for prefixes whose new keys sort last
    (date-partitioned `dt=2026-12-06/...`, timestamps, sequence numbers); every
    `full_listing_every`-th listing is a full one, which finds changed and deleted objects
    and keys that sorted earlier."""
    full_listing_every: int = Field(10, ge=1, le=10_000)
    """With `listing: new_keys`: every Nth listing (the first included) lists the whole prefix."""
    endpoint_url: str | None = None
    """The store's endpoint instead of the provider's (an http:// or https:// URL).
    s3://: an S3-compatible store (MinIO, Ceph, a local server). gs://: a server of the GCS
    JSON API at `scheme://host:port`, no path (an emulator: fake-gcs-server,
    gcp-storage-emulator); its requests are anonymous unless `credentials.token` names a
    service-account file (emulators take no credentials). az://: the Blob service endpoint,
    the account in the path where the server wants it (Azurite:
    `http://127.0.0.1:10000/devstoreaccount1`); requests are signed with the account key
    (`credentials: {key: <account name var>, secret: <account key var>}`), else anonymous
    (a public container)."""
    region: str | None = None
    """The S3 region (default: the library's: environment, profile)."""
    credentials: Credentials = Field(default_factory=Credentials)
    """Names of environment variables holding the credentials: key, secret, token."""
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Passed to the fsspec filesystem as they are (e.g. `anon: true`)."""

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parts = urlsplit(value)
        store = SCHEMES.get(parts.scheme)
        if store is None:
            raise ValueError(f"{value!r}: the URL must start with one of "
                             f"{', '.join(s + '://' for s in SCHEMES)}")
        if not parts.netloc:
            raise ValueError(f"{value!r}: no bucket (or container) in the URL")
        if importlib.util.find_spec(store.package) is None:
            raise ValueError(f"{parts.scheme}:// needs the package {store.package}: install "
                             f"triggerd with the {store.extra} extra "
                             f"(pip install 'triggerd[{store.extra}]')")
        return value

    @field_validator("patterns", "ignore")
    @classmethod
    def _valid_globs(cls, value: list[str]) -> list[str]:
        return valid_globs(value)

    @field_validator("poll")
    @classmethod
    def _valid_poll(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("`poll` must be at least 1s (each listing is paid for)")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _valid_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint_url {value!r}: an http:// or https:// URL with a host "
                             "(e.g. http://127.0.0.1:9000)")
        try:
            _ = parts.port  # a port that is not a number raises
        except ValueError as exc:
            raise ValueError(f"endpoint_url {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _endpoint_for_the_store(self) -> BucketOptions:
        """What an endpoint means depends on the store (see `endpoint_url`)."""
        if self.endpoint_url is None:
            return self
        scheme, parts = self.scheme, urlsplit(self.endpoint_url)
        if scheme in ("gs", "gcs") and parts.path.strip("/"):
            raise ValueError(f"endpoint_url {self.endpoint_url!r}: for {scheme}:// the "
                             "server's root, scheme://host:port without a path (gcsfs "
                             "adds /storage/v1/)")
        if scheme in ("az", "abfs") and "connection_string" in self.options:
            raise ValueError(f"endpoint_url and options.connection_string both say where "
                             f"the {scheme}:// store is: give one")
        return self

    @model_validator(mode="after")
    def _new_keys_on_s3(self) -> BucketOptions:
        if self.listing == "new_keys" and urlsplit(self.url).scheme != "s3":
            raise ValueError("`listing: new_keys` needs an s3:// URL (ListObjectsV2's "
                             "StartAfter); use `listing: full` here")
        return self

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        """The key prefix, '' or ending with '/'."""
        path = urlsplit(self.url).path.lstrip("/")
        return path if not path or path.endswith("/") else path + "/"
