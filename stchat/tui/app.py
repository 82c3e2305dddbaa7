"""The Textual app: shared state (store, settings, engine), the status line, settings and screens.

The chat screen is the default screen; the help, experts, models and settings screens are
pushed on top of it (F1, F3, F4, F5) and closed with Esc. Loading, releasing and warming the
model is `ModelHost` (model_host.py), which this app extends: while a load runs the status bar
counts the seconds, and a failure (model missing, budget too small, corrupt bundle) becomes a
notification.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Iterable

from textual.app import SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from stchat import settings as settings_file
from stchat.models import MODEL_ENV
from stchat.settings import Settings, SettingsError
from stchat.storage import StorageError, Store
from stchat.tui.chat import ChatScreen
from stchat.tui.engine import Engine, RuntimeEngine
from stchat.tui.model_host import ModelHost
from stchat.tui.widgets import human_bytes, status_line


class StchatApp(ModelHost):
    TITLE = "stchat"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
        Binding("f1,question_mark", "help", "Help", id="app.help"),  # the message box types `?`
        Binding("f3", "experts", "Experts", id="app.experts"),
        Binding("f4", "models", "Models", id="app.models"),
        Binding("f5", "settings", "Settings", id="app.settings"),
    ]

    def __init__(self, *, engine: Engine | None = None, store: Store | None = None,
                 settings: Settings | None = None, native_clipboard: bool = True, model: str | None = None):
        super().__init__()
        self.requested_model = model  # `stchat -m MODEL`: loaded at start instead of the default
        self.engine = engine or RuntimeEngine()
        self.native_clipboard = native_clipboard
        self.startup_errors: list[str] = []
        if settings is None:
            try:
                settings = settings_file.load()
            except SettingsError as error:
                self.startup_errors.append(f"Settings ignored, defaults used: {error}")
                settings = Settings()
        self.settings = settings
        if store is None:
            try:
                store = Store.open()
            except StorageError as error:
                self.startup_errors.append(f"{error}. Conversations will not be saved this time.")
                store = Store.open(":memory:")
        self.store = store

    def get_default_screen(self) -> Screen:
        return ChatScreen()

    def on_mount(self) -> None:
        self.apply_theme(self.settings.theme)
        for message in self.startup_errors:
            self.notify(message, severity="error", timeout=10)
        self.refresh_installed()
        wanted = os.environ.get(MODEL_ENV, "").strip()
        if wanted and not self.installed_as(wanted):
            self.notify(f"{MODEL_ENV}={wanted} is not installed (stchat pull {wanted} gets an alias); "
                        f"using the default model.", severity="warning", timeout=10)
        name = self.requested_model or self.default_model()
        if name:
            self.load_model(name)

    # -- status -------------------------------------------------------------------------------
    def memory(self) -> tuple[int | None, int | None]:
        """(bytes in use: the process's resident memory, what the budget bounds; the budget)."""
        model = self.model
        if model is None:
            return None, self.settings.memory_bytes
        if hasattr(model, "memory_in_use"):
            used = model.memory_in_use()
        else:  # an engine without the measurement: its resident part plus cached experts
            used = model.resident_bytes() + model.experts.cache.used
        return used, getattr(model, "memory_budget", None)

    def status_text(self, width: int | None = None):
        used, budget = self.memory()
        hit_rate = None
        if self.model is not None:
            stats = self.model.experts.cache.stats
            hit_rate = stats.hit_rate if stats.hits + stats.misses else None
        return status_line(model_name=self.model_name, loading=self.loading, load_started=self.load_started,
                           now=time.monotonic(), prompt_tps=self.prompt_tps, generation_tps=self.generation_tps,
                           memory_used=used, memory_budget=budget, hit_rate=hit_rate, context=self.context,
                           width=width)

    def refresh_status(self) -> None:
        from stchat.tui.widgets import StatusBar

        for bar in self.screen.query(StatusBar):
            bar.refresh_status()

    # -- clipboard ----------------------------------------------------------------------------
    def copy_text(self, text: str, what: str = "text") -> None:
        """OSC 52 (works over SSH in most terminals) and, when one exists, the native tool."""
        self.copy_to_clipboard(text)
        if self.native_clipboard:
            native_copy(text)
        self.notify(f"Copied the {what} ({len(text)} characters).", timeout=3)

    # -- settings -----------------------------------------------------------------------------
    def apply_theme(self, name: str) -> None:
        if name in self.available_themes:
            self.theme = name
        else:
            self.notify(f"Unknown theme {name!r}; keeping {self.theme}.", severity="warning")

    def budget_problem(self, budget: int | None, context: int | None = None) -> str | None:
        """Why the model in use (or about to be) cannot run in `budget` with `context` tokens,
        or None when it can."""
        name = self.loading or self.model_name or self.default_model()
        if budget is None or name is None:
            return None
        try:
            minimum = self.engine.minimum_budget(name, context)
        except Exception:  # unreadable model: loading it will say why
            return None
        if budget < minimum:
            return f"{name} needs at least {human_bytes(minimum)} (its smallest budget); got {human_bytes(budget)}"
        return None

    def apply_settings(self, new: Settings) -> None:
        """Save and apply: the theme at once, sampling for new chats, memory/threads/context by reloading."""
        old, self.settings = self.settings, new
        settings_file.save(new)
        self.apply_theme(new.theme)
        if (old.memory_budget, old.threads, old.context) != (new.memory_budget, new.threads, new.context) \
                and self.model_name:
            self.notify("Reloading the model with the new memory budget, threads and context.")
            self.load_model(self.model_name)
        elif self.model is None and not self.loading and self.default_model():
            self.load_model(self.default_model())

    # -- screens ------------------------------------------------------------------------------
    def action_help(self) -> None:
        from stchat.tui.help_screen import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_experts(self) -> None:
        from stchat.tui.experts import ExpertsScreen

        if not isinstance(self.screen, ExpertsScreen):
            self.push_screen(ExpertsScreen())

    def action_models(self) -> None:
        from stchat.tui.models_screen import ModelsScreen

        if not isinstance(self.screen, ModelsScreen):
            self.push_screen(ModelsScreen())

    def action_settings(self) -> None:
        from stchat.tui.settings_screen import SettingsScreen

        if not isinstance(self.screen, SettingsScreen):
            self.push_screen(SettingsScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "Every key (F1)", self.action_help)
        yield SystemCommand("Experts", "Which experts are in RAM, per layer (F3)", self.action_experts)
        yield SystemCommand("Models", "Installed models: default, delete (F4)", self.action_models)
        yield SystemCommand("Settings", "Memory budget, threads, sampling, theme (F5)", self.action_settings)
        if isinstance(screen, ChatScreen):
            yield SystemCommand("New chat", "Start a conversation (Ctrl+N)", screen.action_new_conversation)
            yield SystemCommand("Regenerate", "Answer the last message again (Ctrl+R)", screen.action_regenerate)
            yield SystemCommand("Copy reply", "Copy the last reply (Ctrl+O)", screen.action_copy_reply)
            yield SystemCommand("Copy code block", "Copy the last code block (Ctrl+B)", screen.action_copy_code)
            yield SystemCommand("Export", "Save the conversation as Markdown (Ctrl+S)", screen.action_export)

    def on_unmount(self) -> None:
        self.unload_model()


def native_copy(text: str) -> bool:
    """Copy with the platform's clipboard tool if one is installed; False when none worked."""
    candidates = [["pbcopy"]] if sys.platform == "darwin" else [
        ["wl-copy"], ["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    for command in candidates:
        if shutil.which(command[0]):
            try:
                subprocess.run(command, input=text.encode("utf-8"), timeout=2, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return True
            except (OSError, subprocess.SubprocessError):
                continue
    return False
