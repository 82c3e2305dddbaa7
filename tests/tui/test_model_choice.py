"""Which model the app runs: STCHAT_MODEL and the default set in Models (F4) for new chats, as
for `stchat ask`, and a conversation's own model chosen in its settings (F9)."""
from __future__ import annotations

from textual.widgets import Select

from stchat.settings import Settings

from .fakes import FakeEngine
from .test_chat import ready, send, wait_for


async def test_stchat_model_wins_over_the_saved_default_and_takes_aliases(make_app, monkeypatch):
    monkeypatch.setenv("STCHAT_MODEL", "4b")                      # an alias, as `ask` takes it
    app = make_app(FakeEngine(models=("other", "smallthinker-4b")), Settings(default_model="other"))
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        assert app.model_name == "smallthinker-4b"


async def test_stchat_model_not_installed_is_said_and_the_default_is_used(make_app, monkeypatch):
    monkeypatch.setenv("STCHAT_MODEL", "21b")
    app = make_app(FakeEngine(models=("a", "b")), Settings(default_model="b"))
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        assert app.model_name == "b"
        assert any("STCHAT_MODEL=21b is not installed" in n.message and "stchat pull 21b" in n.message
                   for n in app._notifications)


async def test_new_chats_start_on_the_default_model(make_app, store):
    app = make_app(FakeEngine(models=("a", "b")), Settings(default_model="a"))
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await ready(pilot)
        assert app.model_name == "a"
        app.load_model("b")                                       # Models (F4): "use now"
        await wait_for(pilot, lambda: app.model_name == "b")
        await send(pilot, "on b")
        assert store.conversation(screen.conversation_id).model == "b"
        await pilot.press("ctrl+n")                               # a new chat: back to the default
        await wait_for(pilot, lambda: app.model_name == "a")
        await send(pilot, "on a")
        assert store.conversation(screen.conversation_id).model == "a"


async def test_a_conversation_can_be_given_its_model(make_app, store):
    from stchat.tui.conversation_settings import ConversationSettingsScreen

    engine = FakeEngine(models=("a", "b"))
    app = make_app(engine, Settings(default_model="a"))
    async with app.run_test(size=(100, 50)) as pilot:
        screen = await ready(pilot)
        await send(pilot, "first")
        chat = screen.conversation_id
        await pilot.press("f9")
        await wait_for(pilot, lambda: isinstance(app.screen, ConversationSettingsScreen))
        picker = app.screen.query_one("#model", Select)
        assert picker.value == "a"
        picker.value = "b"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and app.model_name == "b")
        assert store.conversation(chat).model == "b"
        await send(pilot, "second")                               # the reply runs on b
        assert engine.sessions[-1].model.name == "b"
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.model_name == "a")
        await screen.open_conversation(chat)                      # reopening it brings its model back
        await wait_for(pilot, lambda: app.model_name == "b")
