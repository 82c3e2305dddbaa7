"""Fixtures shared by every test module, each a named function (add yours below, also named),
and the CI rule on skips (`skips.py`) applied to every report."""
from __future__ import annotations

import pytest

from skips import fail_skip_in_ci


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_skip_in_ci(outcome.get_result())


@pytest.fixture
def stchat_home(tmp_path, monkeypatch):
    """A private, empty stchat data directory: STCHAT_HOME points at it and STCHAT_MODEL is unset.

    Subprocesses started by the test inherit both, so the CLI never sees the user's models."""
    home = tmp_path / "stchat-home"
    home.mkdir()
    monkeypatch.setenv("STCHAT_HOME", str(home))
    monkeypatch.delenv("STCHAT_MODEL", raising=False)
    return home


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A local stand-in for the Hugging Face Hub serving the synthetic models (one per module)."""
    import hub_server

    server = hub_server.serve_synthetic_models(tmp_path_factory.mktemp("hub-models"))
    yield server
    server.close()
