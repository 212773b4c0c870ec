"""Secrets named by the config: `secret_env: HOOK_SECRET` names the environment variable that
holds a secret, never the secret itself.

`read_secret` takes it from `$HOOK_SECRET`, or, when that is unset, from the file named by
`$HOOK_SECRET_FILE` (container secrets mounted as files); a trailing newline of the file is
dropped. A missing secret is a `ConfigError` naming the variable (never its value), raised
where it is read: when a backend or source is built, not at dispatch time. Plugins use it
through `triggerd.plugin.read_secret`.
"""

from __future__ import annotations

import os
from pathlib import Path

from triggerd.errors import ConfigError

__all__ = ["read_secret"]


def read_secret(env_name: str, where: str) -> str:
    """The secret held by `$env_name` (or the file named by `$env_name_FILE`); `where` names
    the option in the error (`backends.hook.secret_env`)."""
    value = os.environ.get(env_name)
    if value is not None:
        return value
    file_var = f"{env_name}_FILE"
    path = os.environ.get(file_var)
    if path is None:
        raise ConfigError([f"{where}: environment variable {env_name} is not set "
                           f"(nor {file_var} naming a file that holds it)"])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read the file named by {file_var}: "
                           f"{exc.strerror or exc}"]) from None
    return text[:-1] if text.endswith("\n") else text
