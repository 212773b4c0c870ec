"""Configuration: the YAML file's schema (pydantic) and its loader (line numbers, include, env)."""
