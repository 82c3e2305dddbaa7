"""The user's settings: one JSON file in the config directory, validated field by field.

`Settings` is what the TUI's settings screen edits and what a new conversation starts from
(sampling, system prompt, model). `from_dict` checks every field and raises `SettingsError`
listing each problem in words a user can act on ("top_p: must be a number in (0, 1], got 2");
`load()` reads `settings.json` from `paths.config_dir()` (defaults when there is none) and
`save()` writes it atomically. Nothing heavy is imported here.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

FILE_NAME = "settings.json"
AUTO = "auto"


class SettingsError(ValueError):
    """Invalid settings; `problems` holds one message per bad field."""

    def __init__(self, problems: list[str], source: Path | None = None):
        self.problems = problems
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(problems))


@dataclass(frozen=True)
class Settings:
    memory_budget: str = AUTO
    """Memory for the weights: "auto" (no limit) or a size such as 2GiB or 1500MB."""
    threads: int = 0
    """CPU threads for inference; 0 uses the CPUs the process may use."""
    temperature: float = 0.6
    """Sampling temperature for new conversations; 0 is greedy."""
    top_k: int = 20
    """Keep the k likeliest tokens; 0 disables."""
    top_p: float = 0.95
    """Nucleus sampling mass in (0, 1]; 1 disables."""
    min_p: float = 0.0
    """Drop tokens below min_p times the likeliest one; 0 disables."""
    repetition_penalty: float = 1.0
    """Above 1 discourages repeated tokens; 1 disables."""
    max_tokens: int = 1024
    """Most tokens in one reply (fewer when the context fills)."""
    context: int = 0
    """Most tokens of a conversation, prompt and replies; 0: the model's trained length (less
    when the memory budget holds less). A conversation may ask for less in its own settings."""
    system_prompt: str = ""
    """System prompt of new conversations; empty for none."""
    theme: str = "textual-dark"
    """Textual theme name."""
    default_model: str = ""
    """Installed model new conversations use; empty: the only installed one (or the first)."""

    # -- derived values -----------------------------------------------------------------------
    @property
    def memory_bytes(self) -> int | None:
        """The budget in bytes, None for automatic."""
        return None if self.memory_budget == AUTO else _parse_size(self.memory_budget)

    @property
    def thread_count(self) -> int | None:
        return self.threads or None

    def sampling(self) -> dict:
        """SamplingParams keywords plus max_tokens, as a conversation stores them."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
                "max_tokens": self.max_tokens, "context": self.context}

    @property
    def context_tokens(self) -> int | None:
        return self.context or None

    def to_dict(self) -> dict:
        return asdict(self)

    # -- validation ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: Path | None = None) -> "Settings":
        """Validated settings from plain values (strings from a form are converted)."""
        if not isinstance(data, dict):
            raise SettingsError(["the file must hold a JSON object"], source)
        values, problems = {}, []
        defaults = cls()
        for f in fields(cls):
            if f.name not in data:
                values[f.name] = getattr(defaults, f.name)
                continue
            try:
                values[f.name] = _CHECKS[f.name](data[f.name])
            except ValueError as error:
                problems.append(f"{f.name}: {error}")
        if problems:
            raise SettingsError(problems, source)
        return cls(**values)

    def replace(self, **changes) -> "Settings":
        return Settings.from_dict({**self.to_dict(), **changes})


def _parse_size(text: str) -> int:
    from stchat.ask import parse_size

    return parse_size(text)


def _text(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {value!r}")
    return value


def _int(low: int, high: int | None = None, note: str = ""):
    def check(value) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            limit = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be a whole number {limit}{note}, got {value!r}")
        return value
    return check


def _float(low: float, high: float, low_open: bool = False, note: str = ""):
    def check(value) -> float:
        original = value
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > low if low_open else value >= low) and value <= high)
        if not ok:
            if math.isfinite(high):
                interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            else:
                interval = f"{'>' if low_open else '>='} {low:g}"
            raise ValueError(f"must be a number {'in ' if math.isfinite(high) else ''}{interval}{note}, got {original!r}")
        return float(value)
    return check


def _memory(value) -> str:
    text = _text(value).strip() or AUTO
    if text.lower() == AUTO:
        return AUTO
    try:
        _parse_size(text)
    except ValueError:
        raise ValueError(f"must be 'auto' or a size such as 2GiB, 1500MB, 4G; got {value!r}") from None
    return text


def _theme(value) -> str:
    text = _text(value).strip()
    if not text:
        raise ValueError("must name a theme")
    return text


_CHECKS = {
    "memory_budget": _memory,
    "threads": _int(0, 1024, " (0: automatic)"),
    "temperature": _float(0.0, math.inf, note=" (0 is greedy)"),
    "top_k": _int(0, None, " (0 disables)"),
    "top_p": _float(0.0, 1.0, low_open=True, note=" (1 disables)"),
    "min_p": _float(0.0, 1.0, note=" (0 disables)"),
    "repetition_penalty": _float(0.0, math.inf, low_open=True, note=" (1 disables)"),
    "max_tokens": _int(1, 1_000_000),
    "context": _int(0, 1_000_000, " (0: the model's trained length)"),
    "system_prompt": _text,
    "theme": _theme,
    "default_model": lambda value: _text(value).strip(),
}


def settings_path() -> Path:
    from stchat.paths import config_dir

    return config_dir() / FILE_NAME


def load(path: Path | None = None) -> Settings:
    """The saved settings (defaults when there is no file); SettingsError names what is wrong."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except OSError as error:
        raise SettingsError([f"cannot read ({error.strerror})"], path) from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise SettingsError([f"not valid JSON ({error})"], path) from None
    return Settings.from_dict(data, path)


def save(settings: Settings, path: Path | None = None) -> Path:
    """Write the settings atomically (a temporary file renamed over the old one)."""
    path = path or settings_path()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(settings.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
