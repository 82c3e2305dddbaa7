"""The settings screen: a form over `stchat.settings.Settings`, validated as a whole on save.

Every problem is listed under the form and its field is marked; nothing is saved until all are
fixed. Saving applies what it can at once: the theme, sampling and system prompt for new
conversations, and the memory budget, threads and context by reloading the model.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, Select, Static, TextArea

from stchat.settings import Settings, SettingsError
from stchat.tui.widgets import StatusBar

FIELDS = [  # (field, label, hint)
    ("memory_budget", "Memory budget", "auto, or a size such as 2GiB, 1500MB"),
    ("threads", "Threads", "0: the CPUs this process may use"),
    ("temperature", "Temperature", "0 is greedy"),
    ("top_k", "Top k", "0 disables"),
    ("top_p", "Top p", "in (0, 1]; 1 disables"),
    ("min_p", "Min p", "in [0, 1]; 0 disables"),
    ("repetition_penalty", "Repetition penalty", "1 disables"),
    ("max_tokens", "Max tokens per reply", ""),
    ("context", "Context (tokens)", "0: the model's trained length (less if the budget holds less)"),
]


class SettingsScreen(Screen):
    DEFAULT_CSS = """
    SettingsScreen VerticalScroll { padding: 1 2; height: 1fr; }
    SettingsScreen .row { height: 3; }
    SettingsScreen .row Label { width: 24; padding: 1 1 0 0; }
    SettingsScreen .row Input, SettingsScreen .row Select { width: 32; }
    SettingsScreen .row .hint { width: 1fr; padding: 1 0 0 2; color: $text-muted; }
    SettingsScreen #system_prompt { height: 6; width: 90; }
    SettingsScreen #errors { color: $error; height: auto; margin: 1 0; }
    SettingsScreen #buttons { height: auto; }
    SettingsScreen #buttons Button { margin-right: 2; }
    SettingsScreen Input.-invalid { border: tall $error; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="settings.cancel"),
        Binding("ctrl+s", "save", "Save", id="settings.save"),
    ]

    def compose(self) -> ComposeResult:
        current = self.app.settings
        with VerticalScroll():
            for name, label, hint in FIELDS:
                with Horizontal(classes="row"):
                    yield Label(label)
                    yield Input(str(getattr(current, name)), id=name)
                    yield Static(hint, classes="hint")
            with Horizontal(classes="row"):
                yield Label("Theme")
                themes = sorted(self.app.available_themes)
                yield Select([(t, t) for t in themes], value=current.theme if current.theme in themes else
                             self.app.theme, allow_blank=False, id="theme")
                yield Static("applied at once", classes="hint")
            yield Label("Default system prompt (new conversations)")
            yield TextArea(current.system_prompt, id="system_prompt")
            yield Static("", id="errors", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")
        yield StatusBar()
        yield Footer()

    def values(self) -> dict:
        data = {name: self.query_one(f"#{name}", Input).value for name, _, _ in FIELDS}
        data["theme"] = self.query_one("#theme", Select).value
        data["system_prompt"] = self.query_one("#system_prompt", TextArea).text
        data["default_model"] = self.app.settings.default_model
        return data

    def on_mount(self) -> None:
        self.query_one("#memory_budget", Input).focus()  # typing goes to the form at once

    def action_save(self) -> None:
        for field in self.query(Input):
            field.remove_class("-invalid")
        try:
            new = Settings.from_dict(self.values())
            problem = self.app.budget_problem(new.memory_bytes, new.context_tokens)
            if problem:
                raise SettingsError([f"memory_budget: {problem}"])
        except SettingsError as error:
            labels = {name: label for name, label, _ in FIELDS}
            shown = []
            for problem in error.problems:  # "field: what is wrong", shown with the field's label
                name, _, what = problem.partition(":")
                shown.append(f"{labels.get(name, name)}:{what}")
                for field in self.query(f"#{name}"):
                    field.add_class("-invalid")
            self.query_one("#errors", Static).update("\n".join(shown))
            self.app.notify(f"{len(error.problems)} setting(s) to fix before saving.", severity="error")
            return
        try:
            self.app.apply_settings(new)
        except OSError as error:
            self.app.notify(f"Cannot save the settings: {error.strerror}", severity="error")
            return
        self.app.notify("Settings saved.")
        self.app.pop_screen()

    def action_cancel(self) -> None:
        self.app.pop_screen()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()
