"""Heads that ship inside this package, by alias (``speculative_config["model"]``)."""

from __future__ import annotations

from pathlib import Path

from tokenleap.model.hub import resolve_model

HEADS_DIR = Path(__file__).parent / "heads"


def shipped_heads() -> list[str]:
    return sorted(p.name for p in HEADS_DIR.iterdir() if (p / "config.json").is_file()) if HEADS_DIR.is_dir() else []


def resolve_head(name_or_path: str) -> Path:
    """A shipped head's alias -> its folder; anything else as ``tokenleap.model.hub.resolve_model`` resolves it."""
    if name_or_path in shipped_heads():
        return HEADS_DIR / name_or_path
    try:
        return resolve_model(name_or_path, progress=False)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"speculative_config.model={name_or_path!r}: {e} Heads shipped with "
                                f"tokenleap-eagle: {shipped_heads()}") from None
