"""The app's side that owns the model: which one is wanted, loading and releasing it, idle work.

`StchatApp` (app.py: settings, status, screens) builds on this class. The model loads in a
thread worker (group "model") that posts `ModelLoading`, `ModelLoaded` or `ModelFailed`; a
load asked for while a reply is written waits for its end (`pending_model`). While nothing is
generating, a "warm" worker builds the experts the model was asked for most in earlier runs;
a reply, a draft's prefill or an unload stops it first. Screens that show models redraw
through `models_changed()`.

A subclass provides `engine`, `settings` and `refresh_status()`.
"""
from __future__ import annotations

import os
import threading
import time

from textual import work
from textual.app import App
from textual.worker import get_current_worker

from stchat.models import MODEL_ENV
from stchat.tui.engine import ModelInfo, describe_error
from stchat.tui.messages import ModelFailed, ModelLoaded, ModelLoading


class ModelHost(App):
    def __init__(self):
        super().__init__()
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
