"""The models screen: installed models (size, source), the default, delete, and pull.

Pulling runs `stchat pull`'s own code in a thread worker with the same progress lines as the
CLI, shown here; Esc stops it (pulling again resumes). Deleting asks first and refuses the
model a reply is being written with.
"""
from __future__ import annotations

import os
from collections import deque

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from stchat.models import MODEL_ENV
from stchat.tui.engine import PullCancelled, describe_error
from stchat.tui.messages import ModelDeleted, PullDone, PullProgress
from stchat.tui.modals import ConfirmScreen
from stchat.tui.widgets import StatusBar, human_bytes

NO_MODEL = ("No model is installed yet. Type 4b below and press Enter to download SmallThinker "
            "4B-A0.6B (about 2.5 GB), or run `stchat pull 4b` in a shell.")


class ModelsScreen(Screen):
    DEFAULT_CSS = """
    ModelsScreen > Vertical { padding: 1 2; height: 1fr; }
    ModelsScreen #models { height: auto; max-height: 60%; }
    ModelsScreen #empty { color: $warning; margin: 1 0; }
    ModelsScreen #keys { color: $text-muted; }
    ModelsScreen #pull-row { height: auto; margin-top: 1; }
    ModelsScreen #pull-spec { width: 1fr; }
    ModelsScreen #pull-log { height: auto; color: $text-muted; margin-top: 1; }
    ModelsScreen .title { text-style: bold; margin-bottom: 1; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back", id="models.back"),
        # told by the line under the table, so the footer keeps room for F1 and F3-F5 at 80 columns
        Binding("d", "make_default", "Make default", id="models.default", show=False),
        Binding("u", "use", "Use now", id="models.use", show=False),
        Binding("delete,x", "delete", "Delete", id="models.delete", show=False),
        Binding("p", "focus_pull", "Pull", id="models.pull", show=False),
    ]
    KEYS = "Enter or u: use now · d: make default (★) · x: delete · p: pull · ● is the loaded model"

    def __init__(self):
        super().__init__()
        self.pulling = False
        self._cancel = False
        self.log_lines: deque[str] = deque(maxlen=6)
        self.status_line = ""

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Installed models", classes="title")
            yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
            yield Static(self.KEYS, id="keys", markup=False)
            yield Static("", id="empty")
            with Horizontal(id="pull-row"):
                yield Input(placeholder="Pull: 4b, 21b, OWNER/REPO[:FILE] or a path to a .gguf file",
                            id="pull-spec")
                yield Button("Pull", id="pull", variant="primary")
            yield Static("", id="pull-log", markup=False)
        yield StatusBar()
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        table.add_columns("", "name", "size", "source")
        self.refresh_table()
        (table if table.row_count else self.query_one("#pull-spec", Input)).focus()

    def models_changed(self) -> None:
        self.refresh_table(list_again=False)

    def refresh_table(self, list_again: bool = True) -> None:
        app = self.app
        if list_again:
            app.refresh_installed()
        table = self.query_one("#models", DataTable)
        selected = self.selected()
        table.clear()
        default = app.default_model()
        for info in app.installed:
            marks = ("★" if info.name == default else " ") + ("●" if info.name == app.model_name else " ")
            table.add_row(marks, info.name, human_bytes(info.size), info.source, key=info.name)
        names = app.installed_names()
        if selected in names:
            table.move_cursor(row=names.index(selected))
        self.query_one("#empty", Static).update("" if names else NO_MODEL)
        self.query_one("#empty", Static).display = not names

    def selected(self) -> str | None:
        table = self.query_one("#models", DataTable)
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:
            return None

    # -- actions ------------------------------------------------------------------------------
    def action_back(self) -> None:
        if self.pulling:
            self._cancel = True
            return
        self.app.pop_screen()

    def action_make_default(self) -> None:
        name = self.selected()
        if name is None:
            return
        self.app.apply_settings(self.app.settings.replace(default_model=name))
        overridden = os.environ.get(MODEL_ENV, "").strip()
        note = f" ({MODEL_ENV}={overridden} chooses while it is set)" if overridden else ""
        self.app.notify(f"{name} is the default model for new conversations and stchat ask.{note}")
        self.refresh_table()

    def action_use(self) -> None:
        name = self.selected()
        if name and name != self.app.model_name:
            self.app.load_model(name)
            self.app.notify(f"Loading {name}…")

    @on(DataTable.RowSelected, "#models")
    def _row_selected(self) -> None:
        self.action_use()

    def action_delete(self) -> None:
        name = self.selected()
        if name is None:
            return
        if name == self.app.model_name and self.app.generating:
            self.app.notify(f"{name} is writing a reply; stop it first (Esc on the chat screen).",
                            severity="warning")
            return

        def done(confirmed: bool | None) -> None:
            if confirmed:
                if name == self.app.model_name:
                    self.app.unload_model()
                self.delete_model(name)

        size = next((human_bytes(i.size) for i in self.app.installed if i.name == name), "?")
        self.app.push_screen(ConfirmScreen(f"Delete the model {name} ({size} on disk)?"), done)

    @work(thread=True, exclusive=True, group="models", exit_on_error=False)
    def delete_model(self, name: str) -> None:
        try:
            self.app.engine.delete(name)
        except Exception as error:
            self.post_message(ModelDeleted(name, describe_error(error)))
            return
        self.post_message(ModelDeleted(name))

    def on_model_deleted(self, message: ModelDeleted) -> None:
        if message.error:
            self.app.notify(message.error, title=f"Cannot delete {message.name}", severity="error")
        else:
            self.app.notify(f"Deleted {message.name}.")
            if self.app.settings.default_model == message.name:
                self.app.apply_settings(self.app.settings.replace(default_model=""))
        self.app.refresh_installed()
        self.app.models_changed()

    # -- pull ---------------------------------------------------------------------------------
    def action_focus_pull(self) -> None:
        self.query_one("#pull-spec", Input).focus()

    @on(Input.Submitted, "#pull-spec")
    @on(Button.Pressed, "#pull")
    def _start_pull(self) -> None:
        spec = self.query_one("#pull-spec", Input).value.strip()
        if not spec:
            self.app.notify("Type what to pull: 4b, 21b, OWNER/REPO or a .gguf path.", severity="warning")
            return
        if self.pulling:
            self.app.notify("A pull is already running.", severity="warning")
            return
        self.pulling, self._cancel = True, False
        self.log_lines.clear()
        self.status_line = f"pulling {spec}… (Esc stops)"
        self._show_log()
        self.pull(spec)

    @work(thread=True, exclusive=True, group="pull", exit_on_error=False)
    def pull(self, spec: str) -> None:
        def report(text: str, transient: bool) -> None:
            self.post_message(PullProgress(text, transient))

        try:
            name = self.app.engine.pull(spec, report, lambda: self._cancel)
        except PullCancelled:
            self.post_message(PullDone(None, cancelled=True))
        except BaseException as error:  # typer.Exit and friends included: never a traceback
            self.post_message(PullDone(None, describe_error(error)))
        else:
            self.post_message(PullDone(name))

    def on_pull_progress(self, message: PullProgress) -> None:
        if message.transient:
            self.status_line = message.text
        else:
            self.log_lines.append(message.text)
        self._show_log()

    def on_pull_done(self, message: PullDone) -> None:
        self.pulling = False
        if message.cancelled:
            self.status_line = "stopped; pull again to resume"
        elif message.error:
            self.status_line = f"failed: {message.error}"
            self.app.notify(message.error, title="Pull failed", severity="error", timeout=15)
        else:
            self.status_line = f"success: {message.name} is installed"
            self.app.notify(f"{message.name} is installed.")
            self.app.refresh_installed()
            self.app.models_changed()
            if self.app.model is None and not self.app.loading:
                self.app.load_model(self.app.default_model() or message.name)
        self._show_log()

    def _show_log(self) -> None:
        self.query_one("#pull-log", Static).update("\n".join([*self.log_lines, self.status_line]))

    def on_unmount(self) -> None:
        self._cancel = True
