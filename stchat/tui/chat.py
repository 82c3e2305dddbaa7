"""The chat screen: conversations on the left, the current one as Markdown, the prompt below.

This module is the screen's layout and keys: opening, sending, regenerating, renaming,
deleting, copying and exporting chats, and the sidebar's place on narrow terminals. What talks
to the model (the session, the reply and draft workers, streaming) is `StreamingScreen`
(streaming.py), which this screen extends; the chat list is `ChatList` (sidebar.py).
"""
from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, ListView, Markdown

from stchat.tui.conversation_settings import ConversationSettingsScreen
from stchat.tui.help_screen import WELCOME, introduction
from stchat.tui.modals import ConfirmScreen, TextPrompt
from stchat.tui.sidebar import ChatList, ConversationItem, title_from
from stchat.tui.streaming import StreamingScreen
from stchat.tui.widgets import MessageView, PromptInput, StatusBar, code_blocks, human_bytes


class ChatScreen(StreamingScreen):
    DEFAULT_CSS = """
    ChatScreen #body { height: 1fr; }
    ChatScreen #sidebar { width: 32; border-right: solid $panel-lighten-2; }
    ChatScreen #search { margin: 0 0 1 0; }
    ChatScreen #conversations { height: 1fr; }
    ChatScreen #messages { height: 1fr; padding: 0 1; }
    ChatScreen #prompt { height: auto; min-height: 3; max-height: 10; }
    ChatScreen .message { height: auto; margin: 0 0 1 0; padding: 0 1; }
    ChatScreen .message.user { background: $boost; border-left: wide $accent; }
    ChatScreen .message.assistant { border-left: wide $primary; }
    ChatScreen .message.failed { border-left: wide $error; color: $text-error; }
    ChatScreen .message:focus { background: $boost; border-left: wide $warning; }
    ChatScreen .message .header { color: $text-muted; text-style: bold; }
    ChatScreen .message Markdown { margin: 0; padding: 0; }
    ChatScreen #welcome { padding: 1 2; }
    """
    # The footer shows the few keys that fit in 80 columns next to F1 and F3-F5; F1 lists all.
    BINDINGS = [
        Binding("ctrl+n", "new_conversation", "New", id="chat.new"),
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("ctrl+r", "regenerate", "Regenerate", id="chat.regenerate", show=False),
        Binding("f2", "rename", "Rename", id="chat.rename", show=False),
        Binding("f9", "conversation_settings", "Chat settings", id="chat.settings", show=False),
        Binding("f8,delete", "delete", "Delete", id="chat.delete", show=False),
        Binding("ctrl+f", "search", "Search", id="chat.search", show=False),
        Binding("ctrl+s", "export", "Export", id="chat.export", show=False),
        Binding("ctrl+o", "copy_reply", "Copy reply", id="chat.copy_reply", show=False),
        Binding("ctrl+b", "copy_code", "Copy code", id="chat.copy_code", show=False),
        Binding("ctrl+l", "toggle_sidebar", "Chats", id="chat.sidebar", show=False),
    ]
    NARROW = 80  # columns below which the sidebar starts hidden (Ctrl+L shows it)

    def __init__(self):
        super().__init__()
        self._sidebar_chosen: bool | None = None  # Ctrl+L's choice, once made, over the automatic one

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield ChatList(id="sidebar")
            with Vertical(id="main"):
                yield VerticalScroll(id="messages")
                yield PromptInput(id="prompt", soft_wrap=True, show_line_numbers=False,
                                  placeholder="Message (Enter sends, Ctrl+J newline)")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        await self.refresh_conversations()
        conversations = self.app.store.conversations()
        if conversations and not self.app.requested_model:  # `stchat -m`: a new chat on that model
            await self.open_conversation(conversations[0].id)
        else:
            await self.show_empty()
        self.query_one(PromptInput).focus()

    @property
    def messages_view(self) -> VerticalScroll:
        return self.query_one("#messages", VerticalScroll)

    async def refresh_conversations(self) -> None:
        await self.query_one(ChatList).show(self.conversation_id)

    async def show_empty(self) -> None:
        await self.messages_view.remove_children()
        if not self.app.engine_installed():
            await self.messages_view.mount(Markdown(WELCOME, id="welcome"))
            return
        app = self.app
        text = introduction(app.model_name, app.loading, getattr(app.model, "max_context", None),
                            human_bytes(app.memory()[1]))
        await self.messages_view.mount(Markdown(text, id="welcome"))

    def models_changed(self) -> None:
        self.call_next(self._redraw_empty)

    async def _redraw_empty(self) -> None:
        """The introduction names the model: redraw it, unless a chat has opened since the
        redraw was asked for (at start, a load can end while the last chat is opening)."""
        if self.conversation_id is None and not self.generating:
            await self.show_empty()

    async def open_conversation(self, conversation_id: int | None) -> None:
        """Show a conversation (None: an empty screen for a new one)."""
        self.workers.cancel_group(self, "draft")
        if self.generating:
            self.stop_reply()
            await self._detach_reply()
        self.conversation_id = conversation_id
        if conversation_id is None:
            await self.show_empty()
            self.app.context = None
            return
        await self.messages_view.remove_children()
        views = [MessageView(m.role, m.content, state=m.state, stats=m.stats, message_id=m.id)
                 for m in self.app.store.messages(conversation_id)]
        if views:
            await self.messages_view.mount_all(views)
        self.messages_view.scroll_end(animate=False)
        self.app.context = None
        self.app.want_model(self.app.store.conversation(conversation_id).model)

    # -- sidebar ------------------------------------------------------------------------------
    @on(ListView.Selected, "#conversations")
    async def _selected(self, event: ListView.Selected) -> None:
        item = event.item
        if isinstance(item, ConversationItem) and item.conversation_id != self.conversation_id:
            await self.open_conversation(item.conversation_id)
        self.query_one(PromptInput).focus()  # the chat chosen (even the one open): type at once

    def action_search(self) -> None:
        self.show_sidebar(True)
        self.query_one(ChatList).focus_search()

    def show_sidebar(self, shown: bool) -> None:
        self.query_one("#sidebar").display = shown
        if not shown:
            self.query_one(PromptInput).focus()

    def action_toggle_sidebar(self) -> None:
        self._sidebar_chosen = not self.query_one("#sidebar").display
        self.show_sidebar(self._sidebar_chosen)

    def on_resize(self) -> None:
        if self._sidebar_chosen is None:  # until Ctrl+L is pressed, the width decides
            self.query_one("#sidebar").display = self.size.width >= self.NARROW

    async def action_new_conversation(self) -> None:
        await self.open_conversation(None)
        self.app.want_model(self.app.default_model())   # new chats start on the default model
        await self.refresh_conversations()
        self.query_one(PromptInput).focus()

    def _target(self) -> int | None:
        return self.query_one(ChatList).target(self.conversation_id)

    def action_rename(self) -> None:
        target = self._target()
        if target is None:
            self.app.notify("Nothing to rename: send a first message.", severity="warning")
            return

        async def done(title: str | None) -> None:
            if title is None:
                return
            try:
                self.app.store.rename(target, title)
            except ValueError as error:
                self.app.notify(str(error), severity="error")
                return
            await self.refresh_conversations()

        self.app.push_screen(TextPrompt("Rename the conversation:", self.app.store.conversation(target).title,
                                        ok_label="Rename"), done)

    def action_conversation_settings(self) -> None:
        target = self._target()
        if target is None:
            self.app.notify("New conversations take the defaults from Settings (F5); send a first message "
                            "to give this one its own.", severity="warning")
            return
        conversation = self.app.store.conversation(target)

        def done(result: tuple[str, dict, str | None] | None) -> None:
            if result is None:
                return
            system_prompt, sampling, model = result
            self.app.store.update_conversation(target, system_prompt=system_prompt.strip() or None, sampling=sampling,
                                               model=model or conversation.model)
            if self.session_key is not None and self.session_key[0] == target:
                self.session = self.session_key = None  # the next reply starts a session with them
            if target == self.conversation_id:
                self.app.want_model(model)
            self.app.notify("Conversation settings saved: the next reply uses them.")

        model = conversation.model or self.app.model_name or self.app.default_model()
        self.app.push_screen(ConversationSettingsScreen(conversation.title, conversation.system_prompt or "",
                                                        conversation.sampling, self.app.settings,
                                                        models=self.app.installed_names(), model=model), done)

    def action_delete(self) -> None:
        target = self._target()
        if target is None:
            return
        title = self.app.store.conversation(target).title

        async def done(confirmed: bool | None) -> None:
            if not confirmed:
                return
            if target == self.conversation_id:
                await self.open_conversation(None)
            self.app.store.delete_conversation(target)
            await self.refresh_conversations()
            self.app.notify(f"Deleted “{title}”.")

        self.app.push_screen(ConfirmScreen(f"Delete the conversation “{title}” and all its messages?"), done)

    # -- sending ------------------------------------------------------------------------------
    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip() or not self._can_generate():
            return
        store = self.app.store
        if self.conversation_id is None:
            settings = self.app.settings
            conversation = store.create_conversation(
                title_from(text), model=self.app.model_name, system_prompt=settings.system_prompt or None,
                sampling=settings.sampling())
            self.conversation_id = conversation.id
            await self.messages_view.remove_children()
        store.add_message(self.conversation_id, "user", text)  # saved before the reply starts
        self.query_one(PromptInput).clear()
        await self.messages_view.mount(MessageView("user", text))
        await self.refresh_conversations()
        await self._start_reply(text, regenerate=False)

    async def action_regenerate(self) -> None:
        if self.conversation_id is None or not self._can_generate():
            return
        messages = self.app.store.messages(self.conversation_id)
        if not messages:
            return
        if messages[-1].role == "assistant":
            self.app.store.delete_message(messages[-1].id)
            views = self.messages_view.query(MessageView)
            if views and views.last().role == "assistant":
                await views.last().remove()
            messages = messages[:-1]
        if not messages or messages[-1].role != "user":
            self.app.notify("Nothing to regenerate.", severity="warning")
            return
        await self._start_reply(messages[-1].content, regenerate=True)

    def action_stop(self) -> None:
        """Esc: in the sidebar, clear the search and go back to typing; elsewhere, stop the reply."""
        if self.query_one(ChatList).leave_search():
            self.query_one(PromptInput).focus()
            return
        self.stop_reply()

    # -- copy and export ----------------------------------------------------------------------
    def _last_reply(self) -> MessageView | None:
        replies = [v for v in self.query(MessageView) if v.role == "assistant"]
        return replies[-1] if replies else None

    def action_copy_reply(self) -> None:
        reply = self._last_reply()
        if reply is None or not reply.content:
            self.app.notify("No reply to copy yet.", severity="warning")
            return
        self.app.copy_text(reply.content, "reply")

    def action_copy_code(self) -> None:
        for view in reversed(list(self.query(MessageView))):
            blocks = code_blocks(view.content)
            if blocks:
                self.app.copy_text(blocks[-1], "code block")
                return
        self.app.notify("No code block in this conversation.", severity="warning")

    def action_export(self) -> None:
        if self.conversation_id is None:
            self.app.notify("Nothing to export yet.", severity="warning")
            return
        conversation = self.app.store.conversation(self.conversation_id)
        slug = "".join(ch if ch.isalnum() else "-" for ch in conversation.title.lower()).strip("-")[:40] or "chat"
        suggestion = str(Path.cwd() / f"{slug}-{conversation.id}.md")

        def done(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()
            try:
                target.write_text(self.app.store.export_markdown(conversation.id), encoding="utf-8")
            except OSError as error:
                self.app.notify(f"{target}: {error.strerror}", title="Export failed", severity="error")
                return
            self.app.notify(f"Exported to {target}")

        self.app.push_screen(TextPrompt("Export the conversation as Markdown to:", suggestion, "Export"), done)
