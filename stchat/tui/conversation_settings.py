"""One conversation's own settings: its model, system prompt, sampling parameters and context.

New conversations start on the default model (Models, F4) with the defaults in Settings (F5);
this dialog (F9) changes what a conversation keeps for itself. Values are checked by the same
rules as the settings file, and the next reply uses them (a changed system prompt or context
means the conversation is prefilled again). Its context can only be at most the one the model
was loaded with (F5).
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from stchat.settings import Settings, SettingsError
from stchat.tui.modals import DIALOG_CSS

SAMPLING_FIELDS = [  # (field, label)
    ("temperature", "Temperature (0: greedy)"),
    ("top_k", "Top k (0: off)"),
    ("top_p", "Top p (1: off)"),
    ("min_p", "Min p (0: off)"),
    ("repetition_penalty", "Repetition penalty"),
    ("max_tokens", "Max tokens per reply"),
    ("context", "Context (0: as in Settings)"),
]


class ConversationSettingsScreen(ModalScreen[tuple[str, dict, str | None] | None]):
    """Dismisses with (system prompt, sampling dict, model) when saved, None when cancelled."""

    DEFAULT_CSS = "ConversationSettingsScreen { align: center middle; }" + DIALOG_CSS + """
    ConversationSettingsScreen .dialog { width: 72; max-height: 100%; }
    ConversationSettingsScreen .field { height: 3; }
    ConversationSettingsScreen .field Label { width: 28; padding: 1 1 0 0; margin: 0; }
    ConversationSettingsScreen .field Input, ConversationSettingsScreen .field Select { width: 1fr; }
    ConversationSettingsScreen #system_prompt { height: 5; }
    ConversationSettingsScreen #errors { color: $error; height: auto; }
    ConversationSettingsScreen Input.-invalid { border: tall $error; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="conversation_settings.cancel"),
        Binding("ctrl+s", "save", "Save", id="conversation_settings.save"),
    ]

    def __init__(self, title: str, system_prompt: str, sampling: dict, defaults: Settings,
                 models: list[str] = (), model: str | None = None):
        super().__init__()
        self.conversation_title, self.system_prompt = title, system_prompt
        self.sampling, self.defaults = sampling, defaults
        self.models, self.model = list(models), model

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog"):  # scrolls on short terminals
            yield Label(f"Settings of “{self.conversation_title}”")
            if self.models:
                with Horizontal(classes="field"):
                    yield Label("Model")
                    yield Select([(name, name) for name in self.models], id="model", allow_blank=False,
                                 value=self.model if self.model in self.models else self.models[0])
            yield Label("System prompt")
            yield TextArea(self.system_prompt, id="system_prompt")
            for name, label in SAMPLING_FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input(str(self.sampling.get(name, getattr(self.defaults, name))), id=name)
            yield Static("", id="errors", markup=False)
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#system_prompt", TextArea).focus()

    def action_save(self) -> None:
        for field in self.query(Input):
            field.remove_class("-invalid")
        values = self.defaults.to_dict() | {name: self.query_one(f"#{name}", Input).value
                                             for name, _ in SAMPLING_FIELDS}
        try:
            checked = Settings.from_dict(values)
        except SettingsError as error:
            self.query_one("#errors", Static).update("\n".join(error.problems))
            for problem in error.problems:
                for field in self.query(f"#{problem.split(':', 1)[0]}"):
                    field.add_class("-invalid")
            return
        model = self.query_one("#model", Select).value if self.models else None
        self.dismiss((self.query_one("#system_prompt", TextArea).text, checked.sampling(), model))

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()
