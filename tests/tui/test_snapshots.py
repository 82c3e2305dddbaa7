"""Snapshots of the main screens on the scripted engine (update with `pytest --snapshot-update`)."""
from __future__ import annotations

from .fakes import FakeEngine
from .test_chat import ready, send, wait_for

SIZE = (110, 32)
REPLY = ("Here is a tiny example:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
         "- it adds\n- it returns")


async def steady(pilot) -> None:
    """Stop every cursor blinking (it then shows wherever there is focus): a snapshot taken in a
    blink's off half-second differed, which a loaded machine made happen."""
    for screen in pilot.app.screen_stack:
        for widget in screen.query("*"):
            if hasattr(widget, "cursor_blink"):
                widget.cursor_blink = False
                widget.notify_style_update()  # TextArea caches lines per blink phase: drop them
    await pilot.pause()


def seeded(store):
    older = store.create_conversation("Cooking risotto", model="tiny")
    store.add_message(older.id, "user", "How long do I cook risotto?")
    store.add_message(older.id, "assistant", "About **18 minutes**, stirring often.")


def test_chat_screen(snap_compare, make_app, store):
    seeded(store)

    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("ctrl+n")
        await send(pilot, "Show me a Python function")
        pilot.app.screen.query_one("#prompt").insert("a draft\nover two lines")
        await pilot.pause()
        await steady(pilot)

    app = make_app(FakeEngine(reply=lambda text: REPLY))
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_first_start_without_a_model(snap_compare, make_app, store):
    async def run_before(pilot):
        await wait_for(pilot, lambda: pilot.app.screen.query("#welcome"))
        await steady(pilot)

    assert snap_compare(make_app(FakeEngine(models=())), terminal_size=SIZE, run_before=run_before)


def test_experts_screen(snap_compare, make_app, store):
    async def run_before(pilot):
        await ready(pilot)
        await send(pilot, "wake up a few experts in every layer please")
        await pilot.press("f3")
        await pilot.pause()
        await steady(pilot)

    assert snap_compare(make_app(FakeEngine()), terminal_size=SIZE, run_before=run_before)


def test_models_screen(snap_compare, make_app, store):
    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("f4")
        await pilot.pause()
        await steady(pilot)

    assert snap_compare(make_app(FakeEngine(models=("smallthinker-4b", "smallthinker-21b"))),
                        terminal_size=SIZE, run_before=run_before)


def test_settings_screen_with_errors(snap_compare, make_app, store):
    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("f5")
        pilot.app.screen.query_one("#top_p").value = "2"
        await pilot.press("ctrl+s")
        await pilot.pause()
        pilot.app.clear_notifications()
        await pilot.pause()
        await steady(pilot)

    assert snap_compare(make_app(FakeEngine()), terminal_size=(110, 45), run_before=run_before)


def test_delete_confirmation(snap_compare, make_app, store):
    seeded(store)

    async def run_before(pilot):
        await ready(pilot)
        await pilot.press("f8")
        await pilot.pause()
        await steady(pilot)

    assert snap_compare(make_app(FakeEngine()), terminal_size=SIZE, run_before=run_before)
