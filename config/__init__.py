"""Typed configuration: the daemon's config file, environment and flags, and per-model config.toml."""
