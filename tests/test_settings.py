"""Settings: defaults, validation messages, and the JSON file in the config directory."""
from __future__ import annotations

import json

import pytest

from stchat import settings
from stchat.settings import Settings, SettingsError


def test_defaults_when_there_is_no_file(stchat_home):
    assert settings.load() == Settings()
    assert settings.settings_path() == stchat_home / "config" / "settings.json"


def test_round_trip(stchat_home):
    chosen = Settings(memory_budget="2GiB", threads=4, temperature=0.0, top_k=0, system_prompt="Be brief.",
                      theme="nord", default_model="tiny")
    path = settings.save(chosen)
    assert json.loads(path.read_text())["memory_budget"] == "2GiB"
    assert settings.load() == chosen
    assert chosen.memory_bytes == 2 * 2**30 and chosen.thread_count == 4
    assert Settings().memory_bytes is None and Settings().thread_count is None


def test_form_strings_are_converted():
    s = Settings.from_dict({"threads": "8", "temperature": "0.2", "top_p": "1", "memory_budget": " AUTO "})
    assert (s.threads, s.temperature, s.top_p, s.memory_budget) == (8, 0.2, 1.0, "auto")


def test_every_problem_is_named():
    with pytest.raises(SettingsError) as caught:
        Settings.from_dict({"memory_budget": "lots", "threads": -1, "top_p": 2, "temperature": "hot",
                            "max_tokens": 0, "theme": "", "repetition_penalty": 0})
    problems = caught.value.problems
    assert problems == [
        "memory_budget: must be 'auto' or a size such as 2GiB, 1500MB, 4G; got 'lots'",
        "threads: must be a whole number between 0 and 1024 (0: automatic), got -1",
        "temperature: must be a number >= 0 (0 is greedy), got 'hot'",
        "top_p: must be a number in (0, 1] (1 disables), got 2",
        "repetition_penalty: must be a number > 0 (1 disables), got 0",
        "max_tokens: must be a whole number between 1 and 1000000, got 0",
        "theme: must name a theme",
    ]


def test_a_broken_file_names_itself(stchat_home):
    path = settings.settings_path()
    path.write_text("{not json")
    with pytest.raises(SettingsError, match="settings.json: not valid JSON"):
        settings.load()
    path.write_text('{"top_k": 2.5}')
    with pytest.raises(SettingsError, match="top_k: must be a whole number >= 0"):
        settings.load()


def test_unknown_keys_are_ignored(stchat_home):
    settings.settings_path().write_text('{"top_k": 3, "future_option": true}')
    assert settings.load().top_k == 3
