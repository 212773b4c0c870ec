"""Settings from the environment (TRIGGERD_*), through pydantic-settings.

    TRIGGERD_CONFIG      main config file            (default config/triggerd.yaml)
    TRIGGERD_STORE       store URL, overrides the config's `store`
    TRIGGERD_STORE_PASSWORD  the store's password, as plain text (no URL-encoding needed);
                         replaces any password in the URL; never shown in any message.
                         Read where every store is opened (triggerd.store.connect.store_url)
    TRIGGERD_STATE_DIR   state directory, overrides the config's `state_dir`
    TRIGGERD_LOG_LEVEL   DEBUG, INFO, WARNING, ERROR (default INFO)
    TRIGGERD_LOG_FORMAT  text | json                 (default text)
    TRIGGERD_HTTP        host:port for /metrics and /healthz (off by default)
    TRIGGERD_SQLITE_CACHE_MB  SQLite's page cache per connection, MiB (default 64; less
                         memory, slower ingest into a large store). Read where a SQLite store
                         is opened (triggerd.store.connect)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIGGERD_", extra="ignore")

    config: str = "config/triggerd.yaml"
    store: str | None = None
    state_dir: str | None = None
    log_level: str = Field("INFO")
    log_format: Literal["text", "json"] = "text"
    http: str | None = None

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("TRIGGERD_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        return value

    @field_validator("http")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        from triggerd.ops.http import parse_address

        if value:
            parse_address(value)  # raises ValueError with the expected form
        return value or None
