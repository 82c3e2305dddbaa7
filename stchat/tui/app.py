"""The Textual app: shared state (store, settings, engine, loaded model) and model loading.

The chat screen is the default screen; the experts, models and settings screens are pushed on
top of it (F3, F4, F5) and closed with Esc. The model loads in a thread worker (group "model")
that posts `ModelLoaded` / `ModelFailed`; while it runs the status bar counts the seconds, and a
failure (model missing, budget too small, corrupt bundle) becomes a notification.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import get_current_worker

from stchat import settings as settings_file
from stchat.models import MODEL_ENV
from stchat.settings import Settings, SettingsError
from stchat.storage import StorageError, Store
from stchat.tui.chat import ChatScreen
from stchat.tui.engine import Engine, ModelInfo, RuntimeEngine, describe_error
from stchat.tui.messages import ModelFailed, ModelLoaded, ModelLoading
from stchat.tui.widgets import human_bytes, status_line


class StchatApp(App):
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
        self.installed: list[ModelInfo] = []
        self.model = None
        self.model_name: str | None = None
        self.loading: str | None = None
        self.load_started: float | None = None
        self.pending_model: str | None = None
        self.generating = False
        self._warm_lock = threading.Lock()  # held while an idle-time expert build runs
        self.prompt_tps: float | None = None
        self.generation_tps: float | None = None
        self.context: tuple[int, int] | None = None

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

    # -- models -------------------------------------------------------------------------------
    def refresh_installed(self) -> list[ModelInfo]:
        try:
            self.installed = self.engine.installed()
        except Exception as error:
            self.notify(f"Cannot list the installed models: {describe_error(error)}", severity="error")
            self.installed = []
        return self.installed

    def engine_installed(self) -> bool:
        return bool(self.installed)

    def installed_names(self) -> list[str]:
        return [info.name for info in self.installed]

    def installed_as(self, wanted: str | None) -> str | None:
        """The installed model `wanted` names: itself or, for an alias (`4b`), the model it installs."""
        names = self.installed_names()
        if not wanted or wanted in names:
            return wanted or None
        from stchat.catalog import find_alias

        try:
            row = find_alias(wanted)
        except Exception:   # no alias table: names still work
            row = None
        return row.name if row is not None and row.name in names else None

    def default_model(self) -> str | None:
        """The model new conversations use, as for `stchat ask`: STCHAT_MODEL, else the default
        set in Models (F4), else the first installed model."""
        for wanted in (os.environ.get(MODEL_ENV, "").strip(), self.settings.default_model):
            name = self.installed_as(wanted)
            if name:
                return name
        names = self.installed_names()
        return names[0] if names else None

    def want_model(self, name: str | None) -> None:
        """Make `name` the loaded model (a conversation's own); a missing one keeps the current."""
        if not name or name in (self.model_name, self.loading):
            return
        if name not in self.installed_names():
            if self.model_name or self.loading:
                self.notify(f"This conversation used the model {name}, which is not installed; "
                            f"using {self.loading or self.model_name}.", severity="warning")
            return
        self.load_model(name)

    def load_model(self, name: str) -> None:
        if self.generating:
            self.pending_model = name  # after the reply in progress
            return
        self.loading, self.load_started = name, time.monotonic()
        self._load(name, self.settings.memory_bytes, self.settings.thread_count, self.settings.context_tokens)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def _load(self, name: str, memory_budget: int | None, threads: int | None, context: int | None) -> None:
        worker = get_current_worker()
        self.post_message(ModelLoading(name))
        started = time.perf_counter()
        try:
            model = self.engine.load(name, memory_budget=memory_budget, threads=threads, context=context)
        except Exception as error:
            self.post_message(ModelFailed(name, describe_error(error)))
            return
        if worker.is_cancelled:  # another load replaced this one
            model.close()
            return
        self.post_message(ModelLoaded(name, model, time.perf_counter() - started))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        if message.name != self.loading:
            message.model.close()
            return
        self.unload_model()
        self.model, self.model_name = message.model, message.name
        self.loading = self.load_started = None
        self.models_changed()
        self.start_warm()

    # -- idle time: build the experts the model uses most -----------------------------------
    def start_warm(self) -> None:
        """While nothing is generating: a reply, a draft's prefill or an unload stops it
        (`stop_warm`), and it starts again after each reply, skipping what is built."""
        if self.model is not None and hasattr(self.engine, "warm") and not self.generating:
            self._warm(self.model)

    def stop_warm(self) -> None:
        """Stop building and wait for the build in flight (a few milliseconds)."""
        self.workers.cancel_group(self, "warm")
        with self._warm_lock:
            pass

    @work(thread=True, exclusive=True, group="warm", exit_on_error=False)
    def _warm(self, model) -> None:
        worker = get_current_worker()
        with self._warm_lock:
            if not worker.is_cancelled:
                self.engine.warm(model, lambda: worker.is_cancelled)

    def on_model_failed(self, message: ModelFailed) -> None:
        if message.name == self.loading:
            self.loading = self.load_started = None
        self.notify(message.error, title=f"Cannot load {message.name}", severity="error", timeout=15)
        self.models_changed()

    def on_model_loading(self, message: ModelLoading) -> None:
        self.models_changed()

    def models_changed(self) -> None:
        """Installed, loading or loaded models changed: every open screen that shows them redraws."""
        self.refresh_status()
        for screen in self.screen_stack:
            if hasattr(screen, "models_changed"):
                screen.models_changed()

    def unload_model(self) -> None:
        for screen in self.screen_stack:
            if hasattr(screen, "stop_draft"):
                screen.stop_draft()  # no prefill may run on a model being closed
        self.stop_warm()
        if self.model is not None:
            model, self.model, self.model_name = self.model, None, None
            try:
                if hasattr(self.engine, "save_usage"):
                    self.engine.save_usage(model)  # the next load warms the hottest experts first
                model.close()
            except Exception:
                pass
        self.prompt_tps = self.generation_tps = None
        self.context = None

    def generation_finished(self) -> None:
        if self.pending_model:
            name, self.pending_model = self.pending_model, None
            self.load_model(name)
        else:
            self.start_warm()

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
