"""Storage: schema and migrations, messages and replies, search, export, and surviving SIGKILL."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stchat import storage
from stchat.storage import SCHEMA_VERSION, Store, StorageError

ROOT = Path(__file__).resolve().parent.parent


def _columns(conn, table):
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_new_database_is_at_the_latest_version_in_wal_mode(tmp_path):
    store = Store.open(tmp_path / "chat.db")
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "stats" in _columns(store.conn, "messages")


def test_default_location_is_the_data_dir(stchat_home):
    store = Store.open()
    assert store.path == stchat_home / "stchat.db" and store.path.is_file()


def test_migration_from_v1_keeps_the_data(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    storage.migrate(conn, target=1)  # a database as the first release wrote it
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "stats" not in _columns(conn, "messages")
    conn.execute("INSERT INTO conversations (title, model, system_prompt, sampling, created_at, updated_at)"
                 " VALUES ('old chat', 'tiny', 'be brief', '{\"temperature\": 0}', 1, 1)")
    conn.execute("INSERT INTO messages (conversation_id, role, content, state, created_at, updated_at)"
                 " VALUES (1, 'user', 'hello', 'complete', 1, 1)")
    conn.close()

    store = Store.open(path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    [conversation] = store.conversations()
    assert (conversation.title, conversation.model, conversation.system_prompt) == ("old chat", "tiny", "be brief")
    assert conversation.sampling == {"temperature": 0}
    [message] = store.messages(conversation.id)
    assert (message.role, message.content, message.stats) == ("user", "hello", None)
    store.update_message(message.id, stats={"generated_tokens": 3})
    assert store.message(message.id).stats == {"generated_tokens": 3}


def test_a_failed_migration_leaves_the_version_alone(tmp_path, monkeypatch):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    storage.migrate(conn, target=1)

    def broken(c):
        c.execute("ALTER TABLE messages ADD COLUMN half_done TEXT")
        raise RuntimeError("boom")

    monkeypatch.setattr(storage, "MIGRATIONS", [storage.MIGRATIONS[0], broken])
    with pytest.raises(RuntimeError):
        storage.migrate(conn, target=2)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "half_done" not in _columns(conn, "messages")


def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="newer than this stchat understands"):
        Store.open(path)


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="junk.db"):
        Store.open(path)


def test_conversations_messages_rename_delete(tmp_path):
    store = Store.open(tmp_path / "chat.db")
    first = store.create_conversation("first", model="m", system_prompt="sys", sampling={"top_k": 5})
    second = store.create_conversation()
    assert second.title == "New chat"
    store.add_message(first.id, "user", "hi")
    assert [c.id for c in store.conversations()] == [first.id, second.id]  # most recent activity first
    assert store.rename(first.id, "  renamed\n chat ").title == "renamed chat"
    with pytest.raises(ValueError):
        store.rename(first.id, "   ")
    with pytest.raises(ValueError):
        store.add_message(first.id, "robot", "x")
    store.delete_conversation(first.id)
    assert [c.id for c in store.conversations()] == [second.id]
    assert store.messages(first.id) == []  # cascaded


def test_search_titles_and_message_text(tmp_path):
    store = Store.open(tmp_path / "chat.db")
    a = store.create_conversation("Rust lifetimes")
    b = store.create_conversation("Cooking")
    store.add_message(b.id, "assistant", "Simmer the RISOTTO for 20% longer")
    c = store.create_conversation("other")
    assert [x.id for x in store.search("rust")] == [a.id]
    assert [x.id for x in store.search("risotto")] == [b.id]
    assert [x.id for x in store.search("20%")] == [b.id]
    assert store.search("_") == [] and store.search("0%l") == []  # wildcards are literal
    assert {x.id for x in store.search("  ")} == {a.id, b.id, c.id}


def test_reply_writer_throttles_and_marks_the_final_state(tmp_path):
    store = Store.open(tmp_path / "chat.db")
    conversation = store.create_conversation()
    store.add_message(conversation.id, "user", "count")
    now = [0.0]
    writer = store.reply_writer(conversation.id, flush_seconds=0.5, flush_tokens=4, clock=lambda: now[0])
    assert store.message(writer.message_id).state == "streaming"
    assert [writer.append(t) for t in ("1", "2", "3")] == [False, False, False]
    assert store.message(writer.message_id).content == ""
    assert writer.append("4") is True  # token count reached
    assert store.message(writer.message_id).content == "1234"
    now[0] = 1.0
    assert writer.append("5") is True  # time reached
    writer.append("6")
    writer.finish("stopped", stats={"reason": "cancelled"})
    message = store.message(writer.message_id)
    assert (message.content, message.state, message.stats) == ("123456", "stopped", {"reason": "cancelled"})


def test_recover_marks_orphaned_streaming_replies_stopped(tmp_path):
    path = tmp_path / "chat.db"
    store = Store.open(path)
    conversation = store.create_conversation()
    store.add_message(conversation.id, "assistant", "half", state="streaming")
    store.close()
    [message] = Store.open(path).messages(conversation.id)
    assert (message.content, message.state) == ("half", "stopped")


def test_export_markdown(tmp_path):
    store = Store.open(tmp_path / "chat.db")
    conversation = store.create_conversation("Primes", model="tiny", system_prompt="Be terse.",
                                             sampling={"temperature": 0})
    store.add_message(conversation.id, "user", "Name a prime.")
    store.add_message(conversation.id, "assistant", "```\n7\n```", state="stopped")
    text = store.export_markdown(conversation.id)
    assert text.startswith("# Primes\n")
    assert "- model: tiny" in text and "- sampling: temperature=0" in text
    assert "## System\n\nBe terse." in text
    assert "## You\n\nName a prime." in text
    assert "## Assistant (stopped)\n\n```\n7\n```\n" in text


_WRITER = textwrap.dedent("""
    import sys, time
    from stchat.storage import Store
    store = Store.open(sys.argv[1])
    conversation = store.create_conversation("killed")
    for i in range(3):
        store.add_message(conversation.id, "user", f"question {i}")
        store.add_message(conversation.id, "assistant", f"answer {i}")
    store.add_message(conversation.id, "user", "last question")
    writer = store.reply_writer(conversation.id, flush_seconds=1e9, flush_tokens=5)
    i = 0
    while True:
        i += 1
        if writer.append(f"t{i} "):
            print(i, flush=True)
        time.sleep(0.002)
""")


def test_sigkill_mid_reply_keeps_every_message_and_the_partial_reply(tmp_path):
    path = tmp_path / "chat.db"
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        flushed = [int(process.stdout.readline()) for _ in range(4)]  # at least 4 flushes on disk
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    assert flushed[-1] >= 20

    store = Store.open(path)
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    [conversation] = store.conversations()
    messages = store.messages(conversation.id)
    assert [(m.role, m.content) for m in messages[:7]] == [
        ("user", "question 0"), ("assistant", "answer 0"), ("user", "question 1"), ("assistant", "answer 1"),
        ("user", "question 2"), ("assistant", "answer 2"), ("user", "last question")]
    reply = messages[7]
    assert reply.role == "assistant" and reply.state == "stopped"  # recovered on open
    tokens = reply.content.split()
    assert len(tokens) >= flushed[-1] and len(tokens) % 5 == 0
    assert tokens == [f"t{i}" for i in range(1, len(tokens) + 1)]
