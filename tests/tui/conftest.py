"""Fixtures for the TUI tests: a temp home, a store in it, and an app factory on a fake engine."""
from __future__ import annotations

import pytest

from stchat.settings import Settings
from stchat.storage import Store

from .fakes import FakeEngine


@pytest.fixture
def store(stchat_home):
    store = Store.open(stchat_home / "stchat.db")
    yield store
    store.close()


@pytest.fixture
def make_app(stchat_home, store):
    """make_app(engine=None, settings=None) -> StchatApp on a FakeEngine, no native clipboard."""
    from stchat.tui.app import StchatApp

    def make(engine: FakeEngine | None = None, settings: Settings | None = None) -> StchatApp:
        return StchatApp(engine=engine or FakeEngine(), store=store, settings=settings or Settings(),
                         native_clipboard=False)

    return make


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests in a fresh event loop (no pytest-asyncio needed)."""
    import asyncio
    import inspect

    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        asyncio.run(pyfuncitem.obj(**kwargs))
        return True
    return None
