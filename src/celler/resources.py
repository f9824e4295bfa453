"""Paths of the files the workflow ships in ``resources/`` (found from an installed or in-repo package)."""

from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    """``$CELLER_RESOURCES``, else the repository's ``resources/`` next to ``src/``."""
    env = os.environ.get("CELLER_RESOURCES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "resources"


def default_vocab_path() -> Path:
    return resources_dir() / "vocab.json"
