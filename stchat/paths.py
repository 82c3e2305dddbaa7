"""Where stchat keeps its files: one place to decide it, so tests and users can move it all.

By default everything lives under the platform's per-user data directory (platformdirs:
`~/.local/share/stchat` on Linux, `~/Library/Application Support/stchat` on macOS). Setting
`STCHAT_HOME` moves all of it (models and configuration) under that one directory instead,
which is what the tests do with a temporary folder. Directories are created when first asked for.
"""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "STCHAT_HOME"
APP_NAME = "stchat"


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _override() -> Path | None:
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser().absolute() if value else None


def data_dir() -> Path:
    """The root of stchat's data: `$STCHAT_HOME`, else the platform's user data directory."""
    override = _override()
    if override is not None:
        return _ensure(override)
    import platformdirs  # imported here: only commands that touch files pay for it

    return _ensure(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)))


def models_dir() -> Path:
    """Installed model bundles, one directory per model name."""
    return _ensure(data_dir() / "models")


def config_dir() -> Path:
    """Configuration files: `$STCHAT_HOME/config`, else the platform's user config directory."""
    override = _override()
    if override is not None:
        return _ensure(override / "config")
    import platformdirs

    return _ensure(Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)))
