"""A triggerd plugin package: the `lines` source and the `jsonl` backend.

Each module imports from `triggerd.plugin` only; `pyproject.toml` names the classes in the
`triggerd.sources` and `triggerd.backends` entry point groups.
"""
