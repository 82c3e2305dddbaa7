"""End to end through the real runtime: first start with no model, import a tiny synthetic GGUF
from the models screen (stchat pull's own code), then chat with it (checking what the model computed each turn); and memory budget errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
from textual.widgets import Input

from compute_spy import ComputeSpy
from stchat.settings import Settings
from stchat.storage import Store
from stchat.tui.widgets import MessageView

from .test_chat import wait_for


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from runtime import synthetic

    return synthetic.write_gguf(synthetic.TINY_4B_LIKE, tmp_path_factory.mktemp("e2e") / "tiny-4b.gguf", seed=0)


async def test_import_a_model_then_chat_with_it(stchat_home, tiny_gguf, monkeypatch):
    from stchat.tui.app import StchatApp

    store = Store.open()
    settings = Settings(temperature=0.0, max_tokens=12)
    app = StchatApp(store=store, settings=settings, native_clipboard=False)  # the real engine
    async with app.run_test(size=(110, 32)) as pilot:
        await pilot.pause()
        assert app.model is None and app.screen.query("#welcome")
        await pilot.press("f4")
        app.screen.query_one("#pull-spec", Input).value = str(tiny_gguf)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.model is not None)
        assert app.model_name == "tiny-4b" and (stchat_home / "models" / "tiny-4b" / "manifest.json").is_file()
        assert "success: tiny-4b is installed" in app.screen.status_line
        await pilot.press("escape")

        chat = app.screen
        chat.query_one("#prompt").insert("Hello there")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(chat.query(MessageView)) == 2 and not chat.generating)
        [conversation] = store.conversations()
        user, reply = store.messages(conversation.id)
        assert (user.role, user.content) == ("user", "Hello there")
        assert reply.role == "assistant" and reply.state == "complete"
        assert reply.stats["prompt_tokens"] > 0 and 0 < reply.stats["generated_tokens"] <= 12
        assert chat.query(MessageView).last().content == reply.content
        cache = app.model.experts.cache
        assert cache.stats.hits + cache.stats.misses > 0 and cache.resident()
        length, capacity = app.context
        assert 5 < length <= capacity
        status = str(app.status_text())
        assert status.startswith("tiny-4b │ prompt ") and "experts" in status and f"ctx {length}/{capacity}" in status

        # later turns reuse the KV cache: what the model computed starts where the cache ended
        session, spy = chat.session, ComputeSpy(monkeypatch)

        async def computed_by(action) -> list[tuple[int, list[int]]]:
            mark = spy.mark()
            await action()  # the reply has started once something was computed, and is over when not generating
            await wait_for(pilot, lambda: spy.since(mark) and not chat.generating)
            assert spy.positions(mark) == list(range(spy.since(mark)[0][0], session.cache.length))
            return spy.since(mark)

        async def send(text):
            chat.query_one("#prompt").insert(text)
            await pilot.press("enter")

        for turn, text in ((2, "And again"), (3, "One more time")):
            held = session.cache.length
            passes = await computed_by(lambda: send(text))
            reply = store.messages(conversation.id)[-1]
            assert reply.state == "complete" and passes[0][0] == held  # nothing before `held` again
            assert reply.stats["prompt_tokens"] == len(passes[0][1])
            assert session.cache.tokens[held:held + len(passes[0][1])] == passes[0][1]
            prompt_end = held + len(passes[0][1])
            if turn == 2:  # regenerate the second reply: only the prompt's last token runs again
                passes = await computed_by(lambda: pilot.press("ctrl+r"))
                assert passes[0] == (prompt_end - 1, session.cache.tokens[prompt_end - 1:prompt_end])
                assert store.messages(conversation.id)[-1].stats["prompt_tokens"] == 1
        assert len(chat.query(MessageView)) == 6
        assert [m.role for m in store.messages(conversation.id)] == ["user", "assistant"] * 3

        # typed with a pause: the draft is prefilled in the background, Enter computes one token
        before = chat.session.cache.length
        chat.query_one("#prompt").insert("Once more, please")
        await wait_for(pilot, lambda: chat.session.cache.length > before + 5, timeout=30)
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(chat.query(MessageView)) == 8 and not chat.generating, timeout=60)
        fourth = store.messages(conversation.id)[-1]
        assert fourth.state == "complete" and fourth.stats["prompt_tokens"] == 1
    store.close()


async def test_a_budget_below_the_minimum_is_a_readable_error(stchat_home, tiny_gguf):
    import runtime

    from stchat.tui.app import StchatApp

    runtime.convert(tiny_gguf, stchat_home / "models" / "tiny")
    app = StchatApp(store=Store.open(), settings=Settings(memory_budget="1KiB"), native_clipboard=False)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.loading is None)
        assert app.model is None
        [note] = [n for n in app._notifications if n.severity == "error"]
        assert note.title == "Cannot load tiny" and "memory budget of 1.0 KiB is too small" in note.message and "needs at least" in note.message


async def test_the_context_setting_and_a_conversation_s_own_context(stchat_home, tiny_gguf):
    """Settings (F5) loads the model with its context; a conversation's own (F9) can ask for less."""
    import runtime

    from stchat.tui.app import StchatApp

    runtime.convert(tiny_gguf, stchat_home / "models" / "tiny")
    store = Store.open()
    app = StchatApp(store=store, settings=Settings(temperature=0.0, max_tokens=500, context=96),
                    native_clipboard=False)
    async with app.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: app.model is not None, timeout=60)
        assert app.model.max_context == 96
        chat = app.screen
        chat.query_one("#prompt").insert("Hello there")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(chat.query(MessageView)) == 2 and not chat.generating, timeout=60)
        assert app.context[1] == 96
        await pilot.press("f9")
        await pilot.pause()
        app.screen.query_one("#context", Input).value = "64"
        await pilot.press("ctrl+s")
        await pilot.pause()
        [conversation] = store.conversations()
        assert store.conversation(conversation.id).sampling["context"] == 64
        chat.query_one("#prompt").insert("Once more")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(chat.query(MessageView)) == 4 and not chat.generating, timeout=60)
        assert app.context[1] == 64 and app.context[0] <= 64
        # max_tokens (500) is a most: the reply stopped when the 64-token context was full
        assert store.messages(conversation.id)[-1].stats["finish_reason"] in ("length", "stop")
    store.close()


async def test_idle_time_builds_the_experts_and_the_record_orders_the_next_run(stchat_home, tiny_gguf):
    """Loaded and waiting for its user, the app builds every expert that fits (none is asked for
    yet); unloading keeps the router's counts, which order the next run's builds."""
    from stchat import usage
    from stchat.imports import import_local
    from stchat.progress import Reporter
    from stchat.tui.app import StchatApp

    import_local(tiny_gguf, Reporter(io.StringIO(), tty=False), None)
    store = Store.open()
    app = StchatApp(store=store, settings=Settings(temperature=0.0, max_tokens=4), native_clipboard=False)
    async with app.run_test(size=(110, 32)) as pilot:
        await wait_for(pilot, lambda: app.model is not None)
        model = app.model
        everything = model.config.num_layers * model.config.num_experts
        await wait_for(pilot, lambda: len(model.experts.cache) == everything)
        assert model.experts.cache.stats.misses == 0  # built before any reply asked
        chat = app.screen
        chat.query_one("#prompt").insert("Hello there")
        await pilot.press("enter")
        await wait_for(pilot, lambda: not chat.generating and len(chat.query(MessageView)) == 2)
        assert model.experts.cache.stats.misses == 0 and model.experts.cache.stats.hits > 0
        asked = model.expert_usage()
    store.close()
    record = usage.load(stchat_home / "models" / "tiny-4b", asked.shape)  # saved when the app closed
    np.testing.assert_array_equal(record, asked)
