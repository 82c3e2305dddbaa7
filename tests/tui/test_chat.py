"""Pilot tests of the chat screen on a scripted engine: typing, sending, stopping, regenerating,
switching and searching conversations, copying and exporting."""
from __future__ import annotations

import asyncio

from textual.widgets import ListView

from stchat.tui.chat import ChatScreen, ConversationItem
from stchat.tui.widgets import MessageView, PromptInput, code_blocks

from .fakes import FakeEngine


async def wait_for(pilot, condition, timeout: float = 120.0) -> None:
    """Pause until `condition()`; the timeout only bounds a hang (5 s was short on a loaded machine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


async def ready(pilot):
    """Wait for the fake model to load; returns the chat screen."""
    await wait_for(pilot, lambda: pilot.app.model is not None)
    return pilot.app.screen


async def send(pilot, text: str) -> None:
    screen = pilot.app.screen
    prompt = screen.query_one(PromptInput)
    prompt.focus()
    prompt.insert(text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: not screen.generating and screen.streaming_view is None)


def views(screen) -> list[tuple[str, str, str]]:
    return [(v.role, v.content, v.state) for v in screen.query(MessageView)]


async def test_enter_sends_and_the_reply_streams_into_storage(make_app, store):
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        assert isinstance(screen, ChatScreen)
        await pilot.press(*"hello")
        await pilot.press("enter")
        await wait_for(pilot, lambda: not screen.generating and len(views(screen)) == 2)
        assert views(screen) == [("user", "hello", "complete"), ("assistant", "You said: **hello**", "complete")]
        assert screen.query_one(PromptInput).text == ""
        [conversation] = store.conversations()
        assert conversation.title == "hello" and conversation.model == "tiny"
        assert [(m.role, m.content, m.state) for m in store.messages(conversation.id)] == [
            ("user", "hello", "complete"), ("assistant", "You said: **hello**", "complete")]
        assert store.messages(conversation.id)[1].stats["generated_tokens"] == 3
        assert app.generation_tps == 20.0 and app.prompt_tps == 100.0
        assert app.context == (4, 4096)
        # the final full render happened: the Markdown widget holds the whole reply
        assert screen.query(MessageView).last().markdown.source == "You said: **hello**"


async def test_newline_keys_and_paste_stay_in_one_message(make_app, store):
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.press("a", "ctrl+j", "b", "shift+enter", "c")
        prompt = screen.query_one(PromptInput)
        assert prompt.text == "a\nb\nc"
        from textual.events import Paste

        app.post_message(Paste("\nline two\nline three"))  # as the driver delivers a bracketed paste
        await pilot.pause()
        assert prompt.text == "a\nb\nc\nline two\nline three"
        assert not screen.generating
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(views(screen)) == 2 and not screen.generating)
        assert views(screen)[0] == ("user", "a\nb\nc\nline two\nline three", "complete")


async def test_blank_message_is_not_sent(make_app, store):
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.press("space", "ctrl+j", "enter")
        await pilot.pause()
        assert views(screen) == [] and store.conversations() == []


async def test_escape_stops_generation_and_marks_the_reply_stopped(make_app, store):
    engine = FakeEngine(reply=lambda text: " ".join(f"w{i}" for i in range(400)), delay=0.01)
    engine.hold_after = 20  # mid-reply when Esc comes, however slow the machine
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.press(*"go", "enter")
        await wait_for(pilot, lambda: screen.streaming_view is not None and len(screen.streaming_view.content) > 10)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.generating)
        role, content, state = views(screen)[-1]
        assert role == "assistant" and state == "stopped"
        assert 0 < len(content.split()) < 400
        [conversation] = store.conversations()
        reply = store.messages(conversation.id)[-1]
        assert (reply.content, reply.state) == (content, "stopped")
        assert reply.stats["finish_reason"] == "cancelled"


async def test_sending_while_generating_is_refused(make_app, store):
    engine = FakeEngine(reply=lambda text: " ".join("x" * 2000), delay=0.01)
    engine.hold_after = 5
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.press(*"one", "enter")
        await wait_for(pilot, lambda: screen.generating)
        screen.query_one(PromptInput).insert("two")
        await pilot.press("enter")
        assert screen.generating
        assert screen.query_one(PromptInput).text == "two"  # kept for later
        assert any("being written" in n.message for n in app._notifications)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.generating)


async def test_regenerate_replaces_the_last_reply(make_app, store):
    engine = FakeEngine(reply=lambda text, n: f"answer number {n}")
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await send(pilot, "question")
        assert views(screen)[-1][1] == "answer number 0"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.generating and views(screen)[-1][1] == "answer number 1")
        assert [v[:2] for v in views(screen)] == [("user", "question"), ("assistant", "answer number 1")]
        [conversation] = store.conversations()
        assert [m.content for m in store.messages(conversation.id)] == ["question", "answer number 1"]
        # the same session was reused: its history holds only the new reply
        assert engine.sessions[-1].messages == [{"role": "user", "content": "question"},
                                                {"role": "assistant", "content": "answer number 1"}]
        assert len(engine.sessions) == 1


async def test_follow_up_turns_reuse_the_session(make_app, store):
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first")
        await send(pilot, "second")
        assert len(engine.sessions) == 1
        assert engine.calls[-1] == ("reply", ["first", "You said: **first**", "second"])


async def test_switching_conversations_restores_history_and_session(make_app, store):
    old = store.create_conversation("older chat", model="tiny")
    store.add_message(old.id, "user", "old question")
    store.add_message(old.id, "assistant", "old answer")
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        assert screen.conversation_id == old.id  # the most recent one opens
        assert [v[1] for v in views(screen)] == ["old question", "old answer"]
        await pilot.press("ctrl+n")
        assert views(screen) == []
        await send(pilot, "fresh start")
        new_id = screen.conversation_id
        assert new_id != old.id
        listing = screen.query_one("#conversations", ListView)
        assert [item.conversation_id for item in listing.query(ConversationItem)] == [new_id, old.id]
        listing.focus()
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: screen.conversation_id == old.id)
        assert [v[1] for v in views(screen)] == ["old question", "old answer"]
        await send(pilot, "and now?")
        # a new session built from the stored history of the old conversation
        assert engine.calls[-1] == ("reply", ["old question", "old answer", "and now?"])


async def test_search_filters_by_title_and_message_text(make_app, store):
    for title, text in [("Rust help", "borrow checker"), ("Dinner", "a risotto recipe"), ("Misc", "nothing")]:
        c = store.create_conversation(title)
        store.add_message(c.id, "user", text)
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.press("ctrl+f", *"riso")
        await pilot.pause()
        listing = screen.query_one("#conversations", ListView)
        titles = [str(item.query_one("Label").render()) for item in listing.query(ConversationItem)]
        assert titles == ["Dinner"]
        screen.query_one("#search").value = "RUST"
        await pilot.pause()
        titles = [str(item.query_one("Label").render()) for item in listing.query(ConversationItem)]
        assert titles == ["Rust help"]
        await pilot.press("enter")  # to the list
        await pilot.press("enter")  # open it
        await wait_for(pilot, lambda: views(screen) and views(screen)[0][1] == "borrow checker")


async def test_rename_and_delete_with_confirmation(make_app, store):
    keep = store.create_conversation("keep me")
    doomed = store.create_conversation("doomed")
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        assert screen.conversation_id == doomed.id
        await pilot.press("f2")
        await pilot.pause()
        await pilot.press(*"renamed", "enter")  # the old title is selected: typing replaces it
        await pilot.pause()
        assert store.conversation(doomed.id).title == "renamed"
        await pilot.press("f8")
        await pilot.pause()
        await pilot.press("escape")  # cancelled: nothing deleted
        await pilot.pause()
        assert len(store.conversations()) == 2
        await pilot.press("f8")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: len(store.conversations()) == 1)
        assert store.conversations()[0].id == keep.id
        assert screen.conversation_id is None


async def test_copy_reply_and_code_block(make_app, store):
    engine = FakeEngine(reply=lambda text: "Here:\n\n```python\nprint('hi')\n```\n\nDone.")
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await send(pilot, "code please")
        await pilot.press("ctrl+o")
        assert app.clipboard == "Here:\n\n```python\nprint('hi')\n```\n\nDone."
        await pilot.press("ctrl+b")
        assert app.clipboard == "print('hi')"
        first = screen.query(MessageView).first()
        first.focus()
        await pilot.press("c")
        assert app.clipboard == "code please"


def test_code_blocks():
    text = "a\n```\none\n```\nb\n~~~sh\ntwo\nlines\n~~~\n````md\n```inner```\n````"
    assert code_blocks(text) == ["one", "two\nlines", "```inner```"]


async def test_export_writes_markdown(make_app, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await send(pilot, "export me")
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        [exported] = list(tmp_path.glob("export-me-*.md"))
        text = exported.read_text()
        assert text.startswith("# export me\n") and "## Assistant\n\nYou said: **export me**" in text


async def test_generation_error_is_a_notification_and_the_partial_reply_is_kept(make_app, store):
    engine = FakeEngine(reply=lambda text: "one two three four")
    engine.fail_after = 2
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await send(pilot, "crash")
        assert views(screen)[-1] == ("assistant", "one two", "stopped")
        [conversation] = store.conversations()
        assert store.messages(conversation.id)[-1].state == "stopped"
        assert any("out of memory: cannot allocate 12 MiB" in n.message for n in app._notifications)


async def test_context_notice_is_shown(make_app, store):
    engine = FakeEngine()
    engine.notice = "context full: dropped the 2 oldest messages"
    app = make_app(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        assert any("dropped the 2 oldest" in n.message for n in app._notifications)


async def test_each_conversation_keeps_its_own_system_prompt_and_sampling(make_app, store):
    from textual.widgets import Input, TextArea

    from stchat.tui.conversation_settings import ConversationSettingsScreen

    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 50)) as pilot:
        screen = await ready(pilot)
        await pilot.press("f9")                       # no conversation yet: explained, no dialog
        await pilot.pause()
        assert not isinstance(app.screen, ConversationSettingsScreen)
        await send(pilot, "first")
        first = screen.conversation_id
        assert engine.sessions[-1].sampling["temperature"] == app.settings.temperature

        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, ConversationSettingsScreen))
        dialog = app.screen
        dialog.query_one("#system_prompt", TextArea).text = "Answer like a pirate."
        dialog.query_one("#temperature", Input).value = "-1"
        await pilot.press("ctrl+s")                   # refused: the dialog stays, the field is marked
        await pilot.pause()
        assert app.screen is dialog and dialog.query_one("#temperature", Input).has_class("-invalid")
        assert "temperature" in str(dialog.query_one("#errors").render())
        dialog.query_one("#temperature", Input).value = "0"
        dialog.query_one("#top_k", Input).value = "5"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen)
        kept = store.conversation(first)
        assert kept.system_prompt == "Answer like a pirate."
        assert kept.sampling["temperature"] == 0.0 and kept.sampling["top_k"] == 5

        await send(pilot, "second")                   # the next reply runs with them
        session = engine.sessions[-1]
        assert session.system_prompt == "Answer like a pirate." and session.sampling["top_k"] == 5

        await pilot.press("ctrl+n")
        await send(pilot, "another chat")             # a new conversation still takes the defaults
        assert store.conversation(screen.conversation_id).system_prompt is None
        assert engine.sessions[-1].sampling["top_k"] == app.settings.top_k


async def test_deleting_a_chat_while_its_reply_streams_stops_it_harmlessly(make_app, store):
    engine = FakeEngine(reply=lambda text: " ".join(f"w{i}" for i in range(2000)), delay=0.005)
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        for _ in range(3):  # the race depends on timing: delete at different points of the reply
            await pilot.press(*"go", "enter")
            await wait_for(pilot, lambda: screen.streaming_view is not None and len(screen.streaming_view.content) > 5)
            await pilot.press("f8")
            await pilot.pause()
            await pilot.press("y")
            await wait_for(pilot, lambda: not screen.generating)
            await pilot.pause(0.05)
            assert store.conversations() == [] and screen.conversation_id is None
            assert views(screen) == []
            assert engine.sessions[-1].cancelled  # the generation was stopped, not left running
        assert app.return_code is None and app.is_running  # no crash


async def test_the_app_opened_on_a_model_starts_a_new_chat_with_it(make_app, store, stchat_home):
    from stchat.settings import Settings
    from stchat.tui.app import StchatApp

    old = store.create_conversation("earlier", model="tiny")
    store.add_message(old.id, "user", "hi")
    engine = FakeEngine(models=("tiny", "other"))
    app = StchatApp(engine=engine, store=store, settings=Settings(), native_clipboard=False, model="other")
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.pause(0.1)
        assert app.model_name == "other" and [c[1] for c in engine.calls if c[0] == "load"] == ["other"]
        assert screen.conversation_id is None and views(screen) == []
        await send(pilot, "hello")
        assert store.conversation(screen.conversation_id).model == "other"


async def test_a_message_too_long_for_the_context_shows_the_error_in_place_of_the_reply(make_app, store):
    from runtime.errors import ContextOverflow

    engine = FakeEngine()
    engine.fail_at_start = ContextOverflow("the message needs 900 tokens plus 128 to answer; the context holds 512")
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await send(pilot, "a very long message")
        reply = screen.query(MessageView).last()
        assert (reply.role, reply.state) == ("assistant", "failed")
        assert reply.markdown.source == "The message needs 900 tokens plus 128 to answer; the context holds 512"
        assert "(no reply)" in str(reply.query_one(".header").render())
        [conversation] = store.conversations()  # nothing misleading stored: no empty reply
        assert [(m.role, m.content) for m in store.messages(conversation.id)] == [("user", "a very long message")]
        engine.fail_at_start = None
        await send(pilot, "short")  # the chat goes on
        assert [m.role for m in store.messages(conversation.id)] == ["user", "user", "assistant"]


async def test_the_first_screen_with_a_model_says_which_and_the_main_keys(make_app, store):
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.pause()
        intro = screen.query_one("#welcome").source
        assert "**tiny** is ready" in intro and "memory budget auto" in intro
        assert all(key in intro for key in ("Enter", "Esc", "Ctrl+N", "F3, F4, F5", "F1"))
        await send(pilot, "hello")  # the first message replaces it
        assert not screen.query("#welcome")


async def test_f1_and_question_mark_open_the_help_but_the_message_box_types_it(make_app, store):
    from stchat.tui.help_screen import HelpScreen

    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await pilot.press("question_mark")  # in the message box: a character
        assert screen.query_one(PromptInput).text == "?" and not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        keys = app.screen.query_one("#keys").source
        assert all(key in keys for key in ("Ctrl+R", "F2, F8", "Ctrl+L", "F9", "Ctrl+O", "Ctrl+S", "F3", "Ctrl+Q"))
        await pilot.press("escape")
        screen.query_one("#conversations").focus()
        await pilot.press("question_mark")  # outside the message box: the help
        assert isinstance(app.screen, HelpScreen)


async def test_search_then_enter_goes_to_the_chat_and_esc_leaves_the_search(make_app, store):
    from textual.widgets import Input

    store.create_conversation("alpha talk")
    store.create_conversation("beta talk")
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        prompt = screen.query_one(PromptInput)
        await pilot.press("ctrl+f", *"alpha", "enter")  # to the list
        await pilot.press("enter")  # open it: typing goes to the message box
        await pilot.pause()
        assert prompt.has_focus and screen.conversation_id == store.conversations()[-1].id
        await pilot.press("ctrl+f", *"beta", "enter", "enter")  # beta is the open chat: still to the box
        await pilot.pause()
        assert prompt.has_focus
        await pilot.press("ctrl+f", *"zzz", "escape")  # Esc: search cleared, back to typing (one key)
        await pilot.pause()
        assert prompt.has_focus and screen.query_one("#search", Input).value == ""
        assert len(screen.query(ConversationItem)) == 2


async def test_narrow_terminals_hide_the_sidebar_and_keep_the_keys_and_context(make_app, store):
    from textual.widgets import Footer

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        for screen_key in (None, "f3", "f4", "f5"):  # each screen's footer shows F1, F3-F5 whole
            if screen_key:
                if app.screen is not screen:
                    app.pop_screen()
                await pilot.press(screen_key)
                await pilot.pause()
            shown = {key.description for key in app.screen.query(Footer).first().query("FooterKey")
                     if key.region.right <= 80 and key.region.width}
            assert {"Experts", "Models", "Settings", "Help"} <= shown, (app.screen, shown)
        app.pop_screen()
        assert screen.query_one("#sidebar").display  # 80 columns: room for it
        status = str(app.status_text(78))
        assert "ctx 4/4096" in status and len(status) <= 78
    app = make_app()
    async with app.run_test(size=(50, 24)) as pilot:
        screen = await ready(pilot)
        assert not screen.query_one("#sidebar").display  # 50 columns: hidden...
        await pilot.press("ctrl+l")
        assert screen.query_one("#sidebar").display  # ...and Ctrl+L shows it


async def test_the_draft_is_prefilled_while_typing_and_enter_stops_it(make_app, store):
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await send(pilot, "first")  # a conversation to continue
        [session] = engine.sessions
        await pilot.press(*"second")
        await wait_for(pilot, lambda: engine.drafts)  # after a pause in typing, in a worker
        assert engine.drafts == [("second", 3, ["first", "You said: **first**"])]
        engine.draft_chunks, engine.draft_delay = 500, 0.01  # a long prefill...
        await pilot.press("!")
        await wait_for(pilot, lambda: any(w.group == "draft" and w.is_running for w in screen.workers))
        await pilot.press("enter")  # ...stops at Enter, and the reply goes on the same session
        await wait_for(pilot, lambda: not screen.generating and len(views(screen)) == 4)
        text, done, _ = engine.drafts[-1]
        assert text == "second!" and done < 500
        assert engine.sessions == [session] and views(screen)[-1][1] == "You said: **second!**"


async def test_a_chat_opened_as_the_model_finishes_loading_stays_on_screen(make_app, store):
    """A load that ends while the screen is empty queues a redraw of the introduction; a chat
    opened before that redraw runs (at start, the most recent one) must stay on screen. A
    loaded machine made this happen: the introduction replaced the chat that had opened."""
    old = store.create_conversation("older chat", model="tiny")
    store.add_message(old.id, "user", "old question")
    app = make_app()
    async with app.run_test() as pilot:
        screen = await ready(pilot)
        await screen.open_conversation(None)
        screen.models_changed()  # what the end of a load does
        await screen.open_conversation(old.id)  # ...and a chat opens before the redraw
        await pilot.pause(0.1)
        assert not screen.query("#welcome")
        assert [v[1] for v in views(screen)] == ["old question"]
