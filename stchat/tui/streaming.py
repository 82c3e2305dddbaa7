"""The model's side of the chat screen: its chat session, the reply worker, prefill while typing.

`ChatScreen` (chat.py: layout, sidebar, keys) builds on this class, which owns everything that
talks to the model. Generation runs in a thread worker (group "generate"): it stores the reply
as it streams (`storage.ReplyWriter`) and hands the text to the screen through a `TextFeed`;
the `ReplyDelta` handler streams it into the last `MessageView`, and `ReplyDone` does a full
Markdown render when the reply ends. Esc calls `session.cancel()`, which the runtime checks
between tokens. One chat session is kept, for the conversation on screen and the loaded model,
so follow-up turns reuse its KV cache; switching conversation (or model) builds a new one from
the stored history. While the user types, a "draft" worker prefills the draft into that session.

A subclass provides `messages_view` (where replies are mounted) and sets `conversation_id`.
"""
from __future__ import annotations

import threading
import time

from textual import on, work
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Markdown
from textual.worker import get_current_worker

from stchat.storage import Conversation
from stchat.tui.engine import describe_error
from stchat.tui.messages import ReplyDelta, ReplyDone, ReplyNotice, ReplyStarted, TextFeed
from stchat.tui.widgets import MessageView, PromptInput, StatusBar, displayable


class StreamingScreen(Screen):
    messages_view: VerticalScroll

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
        self._started = 0.0
        self._tokens = 0
        self._drawn_at_cpu: float | None = None  # the UI thread's CPU time at the last draw

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

    # -- the reply --------------------------------------------------------------------------
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

    def stop_reply(self) -> None:
        if self.generating and self.session is not None:
            self.session.cancel()
            self.app.notify("Stopped.", timeout=2)
