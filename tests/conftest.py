"""Shared pytest fixtures (one import line per fixture module; keep it that way)."""

from tiny_pipelines import tiny_clip_dir, tiny_pipelines  # noqa: F401  (real-model fixtures, session-scoped)
