"""Where teelab keeps its files.

``TEELAB_DATA_DIR`` and ``TEELAB_CACHE_DIR`` override the per-user defaults (tests point them at temporary
folders). Data holds private material (the simulated platform, gateway keys) and is created 0700; the cache
only holds derived values (file hashes) and may be deleted at any time.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def data_dir() -> Path:
    """The per-user data directory (private, 0700)."""
    env = os.environ.get("TEELAB_DATA_DIR")
    return _private_dir(Path(env) if env else Path(platformdirs.user_data_dir("teelab")))


def cache_dir() -> Path:
    """The per-user cache directory (derived values only)."""
    env = os.environ.get("TEELAB_CACHE_DIR")
    return _private_dir(Path(env) if env else Path(platformdirs.user_cache_dir("teelab")))


def config_dir() -> Path:
    """The per-user configuration directory (user-level policies)."""
    env = os.environ.get("TEELAB_CONFIG_DIR")
    return Path(env) if env else Path(platformdirs.user_config_dir("teelab"))
