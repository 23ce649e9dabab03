"""Shared test helpers (tiny checkpoints)."""
