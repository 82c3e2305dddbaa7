"""The chat screen: conversations on the left, the current one as Markdown, the prompt below.

Generation runs in a thread worker (group "generate"): it stores the reply as it streams
(`storage.ReplyWriter`) and posts `ReplyDelta` / `ReplyDone` messages; the handlers stream the
text into the last `MessageView` and do a full Markdown render when the reply ends. Esc calls
`session.cancel()`, which the runtime checks between tokens. One chat session is kept, for the
conversation on screen and the loaded model, so follow-up turns reuse its KV cache; switching
conversation (or model) builds a new one from the stored history.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, ListItem, ListView, Markdown
from textual.worker import get_current_worker

from stchat.storage import Conversation
from stchat.tui.conversation_settings import ConversationSettingsScreen
from stchat.tui.engine import describe_error
from stchat.tui.messages import ReplyDelta, ReplyDone, ReplyNotice, ReplyStarted, TextFeed
from stchat.tui.modals import ConfirmScreen, TextPrompt
from stchat.tui.widgets import MessageView, PromptInput, StatusBar, code_blocks, displayable, human_bytes

NEW_TITLE = "New chat"
WELCOME = """\
# Welcome to stchat

No model is installed yet. Download one from a shell:

```sh
stchat pull 4b
```

or convert a GGUF file you already have with `stchat ask -m ./model.gguf "hi"`.
Then open **Models** (F4) to check it is there; this screen picks it up.
"""


KEYS_IN_SHORT = """\
| key | |
|---|---|
| Enter, Ctrl+J | send, new line |
| Esc | stop the reply being written |
| Ctrl+N, Ctrl+F | new chat, search chats |
| F3, F4, F5 | experts, models, settings |
| F1 | every key |
"""


def introduction(model: str | None, loading: str | None, context: int | None, budget: str) -> str:
    """The empty chat's text once a model is installed: what will answer, and the main keys."""
    if loading:
        state = f"**{loading}** is loading…"
    elif model:
        context_text = f", context {context} tokens" if context else ""
        state = f"**{model}** is ready{context_text}, memory budget {budget}."
    else:
        state = "No model is loaded: choose one in Models (F4)."
    return f"# New chat\n\n{state} Type a message below and press Enter.\n\n{KEYS_IN_SHORT}"


def title_from(text: str) -> str:
    first = " ".join(text.strip().split())
    return first[:48] + ("…" if len(first) > 48 else "") or NEW_TITLE


class ConversationItem(ListItem):
    def __init__(self, conversation: Conversation):
        super().__init__(Label(conversation.title, markup=False), id=f"conversation-{conversation.id}")
        self.conversation_id = conversation.id


class ChatScreen(Screen):
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
        self.conversation_id: int | None = None
        self.session = None
        self.session_key = None
        self.generating = False
        self.streaming_view: MessageView | None = None
        self.stream = None
        self.feed: TextFeed | None = None
        self._session_lock = threading.Lock()  # the session's KV cache: one thread at a time
        self._draft_timer = None
        self._sidebar_chosen: bool | None = None  # Ctrl+L's choice, once made, over the automatic one
        self._started = 0.0
        self._tokens = 0
        self._drawn_at_cpu: float | None = None  # the UI thread's CPU time at the last draw

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Input(placeholder="Search chats (ctrl+f)", id="search")
                yield ListView(id="conversations")
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
        query = self.query_one("#search", Input).value
        found = self.app.store.search(query)
        listing = self.query_one("#conversations", ListView)
        await listing.clear()
        await listing.extend(ConversationItem(c) for c in found)
        ids = [c.id for c in found]
        if self.conversation_id in ids:
            listing.index = ids.index(self.conversation_id)

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
        if self.conversation_id is None and not self.generating:
            self.call_next(self.show_empty)

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

    @on(Input.Changed, "#search")
    async def _search(self, event: Input.Changed) -> None:
        await self.refresh_conversations()

    @on(Input.Submitted, "#search")
    def _search_done(self) -> None:
        listing = self.query_one("#conversations", ListView)
        if listing.index is None and len(listing):
            listing.index = 0
        listing.focus()

    def action_search(self) -> None:
        self.show_sidebar(True)
        self.query_one("#search", Input).focus()

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
        """The conversation a sidebar action means: the highlighted one when the list has focus."""
        listing = self.query_one("#conversations", ListView)
        if listing.has_focus and isinstance(listing.highlighted_child, ConversationItem):
            return listing.highlighted_child.conversation_id
        return self.conversation_id

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
    def _can_generate(self) -> bool:
        if self.generating:
            self.app.notify("A reply is being written: wait, or press Esc to stop it.", severity="warning")
            return False
        if self.app.model is None:
            if self.app.loading:
                self.app.notify(f"The model {self.app.loading} is still loading.", severity="warning")
            elif not self.app.engine_installed():
                self.app.notify("No model installed: run `stchat pull 4b` in a shell.", severity="error")
            else:
                self.app.notify("No model loaded: choose one in Models (F4).", severity="error")
            return False
        return True

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

    async def _start_reply(self, text: str, regenerate: bool) -> None:
        self.workers.cancel_group(self, "draft")
        self.app.stop_warm()  # the reply has the CPU to itself
        self.generating = self.app.generating = True
        self.streaming_view = MessageView("assistant", state="streaming")
        await self.messages_view.mount(self.streaming_view)
        self.messages_view.scroll_end(animate=False)
        self.messages_view.anchor()
        self.stream = Markdown.get_stream(self.streaming_view.markdown)
        self._started, self._tokens, self._drawn_at_cpu = time.monotonic(), 0, None
        feed = self.feed = TextFeed(lambda: self.post_message(ReplyDelta(feed)))
        self.generate(self.app.store.conversation(self.conversation_id), text, regenerate, feed)

    def _session_for(self, conversation: Conversation, regenerate: bool):
        """The chat session for this conversation and model, built from the stored history."""
        model = self.app.model
        key = (conversation.id, id(model))
        if self.session is not None and self.session_key == key:
            return self.session
        stored = self.app.store.messages(conversation.id)
        if not regenerate:
            stored = stored[:-1]  # the user message just saved: send() adds it
        history = [{"role": m.role, "content": m.content} for m in stored if m.role in ("user", "assistant")]
        self.session = self.app.engine.session(model, system_prompt=conversation.system_prompt,
                                               sampling=conversation.sampling, messages=history)
        self.session_key = key
        return self.session

    # -- prefill while typing ---------------------------------------------------------------
    DRAFT_IDLE = 0.3  # seconds without a keystroke before the draft is prefilled

    @on(PromptInput.Changed, "#prompt")
    def _draft_changed(self) -> None:
        """Each edit stops the prefill under way and restarts the wait: typing never waits."""
        self.workers.cancel_group(self, "draft")
        if self._draft_timer is not None:
            self._draft_timer.stop()
        self._draft_timer = self.set_timer(self.DRAFT_IDLE, self._start_draft)

    def stop_draft(self) -> None:
        """Cancel the draft's prefill and wait for its chunk in flight (before the model goes)."""
        self.workers.cancel_group(self, "draft")
        if not self.generating:  # (a reply holds the lock to its end; no draft runs then)
            with self._session_lock:
                pass

    def _start_draft(self) -> None:
        text = self.query_one(PromptInput).text
        if text.strip() and self.conversation_id is not None and self.app.model is not None and not self.generating:
            self.app.stop_warm()  # the draft first; idle-time builds resume after the reply
            self.prefill_draft(self.app.store.conversation(self.conversation_id), text)

    @work(thread=True, exclusive=True, group="draft", exit_on_error=False)
    def prefill_draft(self, conversation: Conversation, text: str) -> None:
        """The conversation plus the draft into the KV cache (`ChatSession.prefill_draft`), so
        Enter prefills only what changed since. Cancelled by an edit, Enter or leaving the chat."""
        worker = get_current_worker()
        with self._session_lock:
            if worker.is_cancelled or self.conversation_id != conversation.id:
                return
            session = self._session_for(conversation, regenerate=True)  # history as stored: no new message yet
            session.prefill_draft(text, cancelled=lambda: worker.is_cancelled)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def generate(self, conversation: Conversation, text: str, regenerate: bool, feed: TextFeed) -> None:
        """Runs in a thread: feeds the session, stores the reply as it streams, posts events."""
        from runtime.events import Finished, Notice, TextDelta

        worker = get_current_worker()
        writer, finished, error = None, None, None
        self._session_lock.acquire()  # a draft being prefilled stops at its next chunk
        try:
            session = self._session_for(conversation, regenerate)
            events = session.regenerate() if regenerate else session.send(text)
            for event in events:
                if writer is None and isinstance(event, (TextDelta, Finished)):
                    # stored from the first token on: a reply that never started (the message
                    # does not fit the context) leaves no empty "stopped" one behind
                    writer = self.app.store.reply_writer(conversation.id)
                    self.post_message(ReplyStarted(conversation.id, writer.message_id))
                if isinstance(event, TextDelta):
                    writer.append(event.text)
                    feed.add(event.text)
                elif isinstance(event, Notice):
                    self.post_message(ReplyNotice(event.message))
                elif isinstance(event, Finished):
                    finished = event
                if worker.is_cancelled and session is not None:
                    session.cancel()
        except Exception as caught:  # shown as a notification, the partial reply is kept
            error = describe_error(caught)
        finally:
            self._session_lock.release()
        state = "complete" if finished is not None and finished.reason != "cancelled" and error is None else "stopped"
        stats = None
        if finished is not None:
            stats = {"finish_reason": finished.reason, "prompt_tokens": finished.prompt_tokens,
                     "generated_tokens": finished.generated_tokens, "prompt_seconds": finished.prompt_seconds,
                     "generation_seconds": finished.generation_seconds, "prompt_tps": finished.prompt_tps,
                     "generation_tps": finished.generation_tps}
        text_out = ""
        if writer is not None:
            try:
                writer.finish(state, stats)
            except Exception as caught:
                error = error or f"the reply could not be saved: {describe_error(caught)}"
            text_out = writer.text
        self.post_message(ReplyDone(conversation.id, writer.message_id if writer else None, text_out,
                                    state, stats, error))

    def on_reply_started(self, message: ReplyStarted) -> None:
        if self.streaming_view is not None:
            self.streaming_view.message_id = message.message_id

    async def on_reply_delta(self, message: ReplyDelta) -> None:
        text, tokens = message.feed.take()
        if message.feed is not self.feed or self.streaming_view is None:
            return  # a reply whose chat has left the screen
        ui_cpu = time.thread_time()  # this thread's: the last draw, its layout and render, timers
        if self._drawn_at_cpu is not None:
            message.feed.pace(ui_cpu - self._drawn_at_cpu)
        self._drawn_at_cpu = ui_cpu
        self._tokens += tokens
        self.streaming_view.content += text
        if self.stream is not None:
            await self.stream.write(displayable(text))
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            self.app.generation_tps = self._tokens / elapsed
        self._update_context()

    def on_reply_notice(self, message: ReplyNotice) -> None:
        self.app.notify(message.text, title="Context")

    async def _detach_reply(self) -> None:
        """Stop drawing the reply in progress: its chat is leaving the screen (switched away
        from or deleted). Its remaining events then find no view and change nothing on screen.
        The attributes are cleared before any await, since handlers may run in between."""
        stream, self.stream, self.streaming_view, self.feed = self.stream, None, None, None
        if stream is not None:
            await stream.stop()

    async def on_reply_done(self, message: ReplyDone) -> None:
        view = self.streaming_view
        await self._detach_reply()
        if view is not None and view.is_attached:
            if message.message_id is None and message.error:  # nothing was said: say why, there
                await view.fail(message.error)
            else:
                await view.finish(message.text, message.state, message.stats)
        if message.stats:
            self.app.prompt_tps = message.stats["prompt_tps"] if message.stats["prompt_tokens"] else None
            self.app.generation_tps = message.stats["generation_tps"] if message.stats["generated_tokens"] else None
        self._update_context()
        self.generating = self.app.generating = False
        if message.error:
            self.session = self.session_key = None  # rebuild from the stored history next time
            if message.message_id is not None and self.app.store.has_conversation(message.conversation_id):
                self.app.notify(message.error, title="Generation failed", severity="error", timeout=10)
        self.query_one("#status", StatusBar).refresh_status()
        self.app.generation_finished()

    def _update_context(self) -> None:
        cache = getattr(self.session, "cache", None)
        if cache is not None:
            self.app.context = (cache.length, cache.capacity)

    def action_stop(self) -> None:
        """Esc: in the sidebar, clear the search and go back to typing; elsewhere, stop the reply."""
        search, listing = self.query_one("#search", Input), self.query_one("#conversations", ListView)
        if search.has_focus or listing.has_focus:
            if search.value:
                search.value = ""  # lists every chat again
            self.query_one(PromptInput).focus()
            return
        self.stop_reply()

    def stop_reply(self) -> None:
        if self.generating and self.session is not None:
            self.session.cancel()
            self.app.notify("Stopped.", timeout=2)

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
