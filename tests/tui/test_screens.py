"""Pilot tests of the experts, models and settings screens, first start, and load errors."""
from __future__ import annotations

import json

from textual.widgets import DataTable, Input, Select

from stchat import settings as settings_file
from stchat.settings import Settings
from stchat.tui.experts import ExpertsScreen
from stchat.tui.models_screen import ModelsScreen
from stchat.tui.settings_screen import SettingsScreen

from .fakes import FakeEngine
from .test_chat import ready, send, wait_for


def rows(screen) -> list[list[str]]:
    table = screen.query_one("#models", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_experts_view_shows_resident_experts_and_hits(make_app, store):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("f3")
        assert isinstance(app.screen, ExpertsScreen)
        assert "No expert used yet" in app.screen.text.plain
        await pilot.press("escape")
        await send(pilot, "light up some experts please")
        await pilot.press("f3")
        await pilot.pause(0.6)  # one refresh tick
        text = app.screen.text.plain
        cache = app.model.experts.cache
        assert f"{len(cache.resident())} experts in RAM" in text
        assert "layers.0" in text and "layers.3" in text and "Hottest experts" in text
        top_key, top_hits = max(cache.stats.hits_by_key.items(), key=lambda kv: (kv[1], [-k for k in kv[0]]))
        assert f"layers.{top_key[0]}/experts.{top_key[1]}: {top_hits} hits (RAM)" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, ExpertsScreen)


async def test_models_screen_lists_sets_default_and_deletes(make_app, store, stchat_home):
    engine = FakeEngine(models=("tiny", "small"))
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("f4")
        screen = app.screen
        assert isinstance(screen, ModelsScreen)
        assert rows(screen) == [["★●", "tiny", "300 MiB", "org/tiny-GGUF"], ["  ", "small", "600 MiB", "org/small-GGUF"]]
        await pilot.press("down", "d")
        await pilot.pause()
        assert app.settings.default_model == "small"
        assert json.loads(settings_file.settings_path().read_text())["default_model"] == "small"
        assert [r[0] for r in rows(screen)] == [" ●", "★ "]
        await pilot.press("u")  # use it now
        await wait_for(pilot, lambda: app.model_name == "small")
        assert engine.loaded[0].closed  # the previous model was released
        await pilot.pause()
        assert [r[0] for r in rows(screen)] == ["  ", "★●"]  # the loaded-model mark follows
        await pilot.press("up", "delete")
        await pilot.pause()
        await pilot.press("escape")  # not confirmed
        await pilot.pause()
        assert engine.deleted == []
        await pilot.press("delete")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: engine.deleted == ["tiny"])
        await wait_for(pilot, lambda: [r[1] for r in rows(screen)] == ["small"])


async def test_models_screen_pulls_with_progress_and_reports_failures(make_app, store):
    engine = FakeEngine(models=("tiny",))
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("f4", "p", *"bad", "enter")
        screen = app.screen
        await wait_for(pilot, lambda: not screen.pulling and "failed" in screen.status_line)
        assert "404 not found" in screen.status_line
        assert any("404" in n.message for n in app._notifications)
        screen.query_one("#pull-spec", Input).value = "new"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not screen.pulling and "success" in screen.status_line)
        assert list(screen.log_lines) == ["downloading new.gguf (10 MiB)", "installed new"]
        assert [r[1] for r in rows(screen)] == ["tiny", "new"]


async def test_a_pull_can_be_stopped(make_app, store):
    engine = FakeEngine(models=("tiny",))
    engine.pull_steps, engine.pull_delay, engine.pull_hold_after = 500, 0.01, 2
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("f4", "p", *"big", "enter")
        screen = app.screen
        await wait_for(pilot, lambda: "%" in screen.status_line)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.pulling)
        assert screen.status_line == "stopped; pull again to resume"
        assert "big" not in engine.models
        await pilot.press("escape")
        assert not isinstance(app.screen, ModelsScreen)


async def test_first_start_without_a_model_leads_to_pull(make_app, store):
    app = make_app(FakeEngine(models=()))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.model is None and app.loading is None
        welcome = app.screen.query_one("#welcome")
        assert "stchat pull 4b" in welcome.source
        await pilot.press(*"hello", "enter")
        await pilot.pause()
        assert any("No model installed" in n.message for n in app._notifications)
        await pilot.press("f4")
        empty = app.screen.query_one("#empty")
        assert "stchat pull 4b" in str(empty.render())
        assert app.screen.query_one("#pull-spec", Input).has_focus
        await pilot.press(*"4b", "enter")
        await wait_for(pilot, lambda: app.model_name == "4b")  # pulled, then loaded
        await pilot.pause()
        assert [r[0] for r in rows(app.screen)] == ["★●"]
        await pilot.press("escape")
        await pilot.pause()
        welcome = app.screen.query_one("#welcome").source  # no longer "no model is installed"
        assert "**4b** is ready" in welcome and "No model is installed" not in welcome and "F1" in welcome


async def test_a_load_error_is_a_readable_notification(make_app, store):
    from runtime import BudgetTooSmall

    engine = FakeEngine(load_error=BudgetTooSmall("memory budget of 1 MiB is too small: this model needs at least 60 MiB"))
    app = make_app(engine)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.loading is None)
        assert app.model is None
        [note] = [n for n in app._notifications if n.severity == "error"]
        assert note.title == "Cannot load tiny"
        assert note.message == "memory budget of 1 MiB is too small: this model needs at least 60 MiB"


async def open_settings(pilot) -> SettingsScreen:
    await ready(pilot)
    await pilot.press("f5")
    assert isinstance(pilot.app.screen, SettingsScreen)
    return pilot.app.screen


async def test_settings_round_trip_and_validation(make_app, store, stchat_home):
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(120, 45)) as pilot:
        screen = await open_settings(pilot)
        screen.query_one("#top_p", Input).value = "2"
        screen.query_one("#memory_budget", Input).value = "lots"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)  # not saved
        errors = str(screen.query_one("#errors").render())
        assert "Top p: must be a number in (0, 1]" in errors and "Memory budget: must be 'auto'" in errors
        assert screen.query_one("#top_p", Input).has_class("-invalid")
        assert not settings_file.settings_path().exists()

        screen.query_one("#top_p", Input).value = "0.8"
        screen.query_one("#memory_budget", Input).value = "512MiB"
        screen.query_one("#threads", Input).value = "2"
        screen.query_one("#temperature", Input).value = "0"
        screen.query_one("#theme", Select).value = "nord"
        screen.query_one("#system_prompt").text = "Answer in French."
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen)
        saved = settings_file.load()
        assert (saved.top_p, saved.memory_budget, saved.threads, saved.temperature, saved.theme,
                saved.system_prompt) == (0.8, "512MiB", 2, 0.0, "nord", "Answer in French.")
        assert app.theme == "nord"
        # memory and threads changed: the model is reloaded with them
        await wait_for(pilot, lambda: engine.calls[-1] == ("load", "tiny", 512 * 2**20, 2) and app.model is not None)
        # a new conversation takes the new defaults
        await send(pilot, "bonjour")
        conversation = store.conversations()[0]
        assert conversation.system_prompt == "Answer in French."
        assert conversation.sampling["temperature"] == 0.0 and conversation.sampling["top_p"] == 0.8
        assert engine.sessions[-1].system_prompt == "Answer in French."

        await pilot.press("f5")
        assert app.screen.query_one("#top_p", Input).value == "0.8"
        await pilot.press("escape")
        assert not isinstance(app.screen, SettingsScreen)


async def test_settings_refuse_a_budget_below_the_model_minimum_and_take_typing_at_once(make_app, store,
                                                                                        stchat_home):
    app = make_app()
    async with app.run_test(size=(120, 45)) as pilot:
        screen = await open_settings(pilot)
        assert app.focused is screen.query_one("#memory_budget", Input)  # typing is not lost
        screen.query_one("#memory_budget", Input).value = ""
        await pilot.press(*"1KB", "ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen) and not settings_file.settings_path().exists()
        errors = str(screen.query_one("#errors").render())
        assert errors == "Memory budget: tiny needs at least 60 MiB (its smallest budget); got 1000 B"
        assert screen.query_one("#memory_budget", Input).has_class("-invalid")
        screen.query_one("#memory_budget", Input).value = ""
        await pilot.press(*"60MiB", "ctrl+s")  # exactly the minimum: saved
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen)
        assert settings_file.load().memory_budget == "60MiB"


async def test_broken_settings_file_falls_back_to_defaults_with_a_message(stchat_home, store):
    from stchat.tui.app import StchatApp

    settings_file.settings_path().write_text('{"top_k": -3}')
    app = StchatApp(engine=FakeEngine(), store=store, native_clipboard=False)
    async with app.run_test() as pilot:
        await ready(pilot)
        assert app.settings == Settings()
        assert any("top_k: must be a whole number" in n.message for n in app._notifications)
