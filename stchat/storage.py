"""Saved conversations: one SQLite file in the data directory, so nothing typed or received is lost.

The schema is literal SQL, its version lives in `PRAGMA user_version`, and `MIGRATIONS[n]`
takes a database from version n to n + 1; `Store.open` applies the missing ones in order, each
in its own transaction. The file is in WAL mode: a reader never blocks the writer, and a
transaction that committed survives the process being killed.

Writing a reply: the user's message is committed before generation starts; `ReplyWriter`
inserts the assistant message as `streaming`, rewrites its content at most every
`FLUSH_SECONDS` (or `FLUSH_TOKENS` deltas), each time in its own short transaction, and marks it
`complete` or `stopped` at the end. A message still `streaming` when the store is next opened
belongs to a process that died: `recover()` marks it `stopped`.

The connection may be used from several threads (the TUI writes replies from its generation
worker); a lock serialises them.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DB_NAME = "stchat.db"
ROLES = ("user", "assistant", "system")
STATES = ("complete", "streaming", "stopped")
FLUSH_SECONDS = 0.5
FLUSH_TOKENS = 32

# -- schema ---------------------------------------------------------------------------------
SCHEMA_V1 = """
CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY,
    title         TEXT    NOT NULL,
    model         TEXT,                          -- installed model name; NULL: the default one
    system_prompt TEXT,
    sampling      TEXT    NOT NULL DEFAULT '{}', -- JSON: SamplingParams keywords + max_tokens
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL
);
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT    NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content         TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'complete'
                            CHECK (state IN ('complete', 'streaming', 'stopped')),
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);
"""

# v2: what a reply cost (token counts, tokens/s, finish reason), shown and exported with it.
SCHEMA_V2 = """
ALTER TABLE messages ADD COLUMN stats TEXT;  -- JSON or NULL
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute each statement inside the caller's transaction (executescript would commit)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    for statement in code.split(";"):
        if statement.strip():
            conn.execute(statement)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    lambda conn: _run_script(conn, SCHEMA_V1),  # 0 -> 1
    lambda conn: _run_script(conn, SCHEMA_V2),  # 1 -> 2
]
SCHEMA_VERSION = len(MIGRATIONS)


class StorageError(Exception):
    """The database cannot be used (newer schema, unreadable file); the message says why."""


@dataclass
class Conversation:
    id: int
    title: str
    model: str | None
    system_prompt: str | None
    sampling: dict
    created_at: float
    updated_at: float


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    state: str
    created_at: float
    updated_at: float
    stats: dict | None = field(default=None)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to `target`, one transaction per step; returns the version found."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise StorageError(f"the conversation database has schema version {found}, newer than this "
                           f"stchat understands ({SCHEMA_VERSION}): upgrade stchat")
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


class Store:
    """Conversations and their messages in one SQLite file."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None):
        self.conn = conn
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | Path | None = None) -> "Store":
        """Open (creating and migrating as needed) the database; default: data dir/stchat.db."""
        if path is None:
            from stchat.paths import data_dir

            path = data_dir() / DB_NAME
        path = Path(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except sqlite3.DatabaseError as error:
            raise StorageError(f"{path}: cannot open the conversation database ({error})") from None
        store = cls(conn, path)
        store.recover()
        return store

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        """One statement in its own transaction."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self.conn.execute(sql, args)
                self.conn.execute("COMMIT")
                return cursor
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def recover(self) -> int:
        """Mark replies left `streaming` by a process that died as `stopped`; returns how many."""
        return self._write("UPDATE messages SET state = 'stopped' WHERE state = 'streaming'").rowcount

    # -- conversations ------------------------------------------------------------------------
    def create_conversation(self, title: str = "New chat", *, model: str | None = None,
                            system_prompt: str | None = None, sampling: dict | None = None) -> Conversation:
        now = time.time()
        cursor = self._write(
            "INSERT INTO conversations (title, model, system_prompt, sampling, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (title, model, system_prompt, json.dumps(sampling or {}), now, now))
        return self.conversation(cursor.lastrowid)

    def conversation(self, conversation_id: int) -> Conversation:
        rows = self._read("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        if not rows:
            raise KeyError(conversation_id)
        return _conversation(rows[0])

    def has_conversation(self, conversation_id: int) -> bool:
        return bool(self._read("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)))

    def conversations(self) -> list[Conversation]:
        """All conversations, the most recently active first."""
        return [_conversation(row) for row in
                self._read("SELECT * FROM conversations ORDER BY updated_at DESC, id DESC")]

    def update_conversation(self, conversation_id: int, **changes: Any) -> Conversation:
        """Change title, model, system_prompt or sampling."""
        allowed = {"title", "model", "system_prompt", "sampling"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
        if "sampling" in changes:
            changes["sampling"] = json.dumps(changes["sampling"] or {})
        if changes:
            columns = ", ".join(f"{name} = ?" for name in changes)
            self._write(f"UPDATE conversations SET {columns}, updated_at = ? WHERE id = ?",
                        (*changes.values(), time.time(), conversation_id))
        return self.conversation(conversation_id)

    def rename(self, conversation_id: int, title: str) -> Conversation:
        title = " ".join(title.split())
        if not title:
            raise ValueError("a title cannot be empty")
        return self.update_conversation(conversation_id, title=title)

    def delete_conversation(self, conversation_id: int) -> None:
        self._write("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def search(self, query: str) -> list[Conversation]:
        """Conversations whose title or any message contains `query` (case-insensitive)."""
        query = query.strip()
        if not query:
            return self.conversations()
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read(
            "SELECT * FROM conversations c WHERE c.title LIKE ?1 ESCAPE '\\' OR EXISTS ("
            "  SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ?1 ESCAPE '\\')"
            " ORDER BY updated_at DESC, id DESC", (pattern,))
        return [_conversation(row) for row in rows]

    # -- messages -----------------------------------------------------------------------------
    def add_message(self, conversation_id: int, role: str, content: str, *, state: str = "complete",
                    stats: dict | None = None) -> Message:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        now = time.time()
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self.conn.execute(
                    "INSERT INTO messages (conversation_id, role, content, state, created_at, updated_at, stats)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (conversation_id, role, content, state, now, now, _json_or_none(stats)))
                self.conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return self.message(cursor.lastrowid)

    def update_message(self, message_id: int, *, content: str | None = None, state: str | None = None,
                       stats: dict | None = None) -> None:
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        sets, args = ["updated_at = ?"], [time.time()]
        for name, value in (("content", content), ("state", state), ("stats", _json_or_none(stats))):
            if value is not None:
                sets.append(f"{name} = ?")
                args.append(value)
        self._write(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", (*args, message_id))

    def delete_message(self, message_id: int) -> None:
        self._write("DELETE FROM messages WHERE id = ?", (message_id,))

    def message(self, message_id: int) -> Message:
        rows = self._read("SELECT * FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise KeyError(message_id)
        return _message(rows[0])

    def messages(self, conversation_id: int) -> list[Message]:
        return [_message(row) for row in
                self._read("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))]

    def reply_writer(self, conversation_id: int, **kwargs) -> "ReplyWriter":
        return ReplyWriter(self, conversation_id, **kwargs)

    # -- export -------------------------------------------------------------------------------
    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as a Markdown document (title, settings, then each message)."""
        conversation = self.conversation(conversation_id)
        lines = [f"# {conversation.title}", ""]
        if conversation.model:
            lines.append(f"- model: {conversation.model}")
        if conversation.sampling:
            settings = ", ".join(f"{k}={v}" for k, v in sorted(conversation.sampling.items()))
            lines.append(f"- sampling: {settings}")
        lines.append(f"- created: {time.strftime('%Y-%m-%d %H:%M', time.localtime(conversation.created_at))}")
        lines.append("")
        if conversation.system_prompt:
            lines += ["## System", "", conversation.system_prompt, ""]
        names = {"user": "You", "assistant": "Assistant", "system": "System"}
        for message in self.messages(conversation_id):
            heading = names[message.role]
            if message.state != "complete":
                heading += f" ({message.state})"
            lines += [f"## {heading}", "", message.content, ""]
        return "\n".join(lines).rstrip() + "\n"


class ReplyWriter:
    """Stores one assistant reply while it streams: throttled rewrites, then its final state."""

    def __init__(self, store: Store, conversation_id: int, *, flush_seconds: float = FLUSH_SECONDS,
                 flush_tokens: int = FLUSH_TOKENS, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.flush_seconds, self.flush_tokens, self.clock = flush_seconds, flush_tokens, clock
        self.message_id = store.add_message(conversation_id, "assistant", "", state="streaming").id
        self.pieces: list[str] = []
        self._unsaved = 0
        self._last_flush = clock()
        self.closed = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def append(self, delta: str) -> bool:
        """Add streamed text; returns whether it was written to disk now."""
        self.pieces.append(delta)
        self._unsaved += 1
        if self._unsaved >= self.flush_tokens or self.clock() - self._last_flush >= self.flush_seconds:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        self.store.update_message(self.message_id, content=self.text)
        self._unsaved = 0
        self._last_flush = self.clock()

    def finish(self, state: str = "complete", stats: dict | None = None) -> None:
        """The final content and state ("complete" or "stopped"); safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.store.update_message(self.message_id, content=self.text, state=state, stats=stats)


def _json_or_none(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)


def _conversation(row: sqlite3.Row) -> Conversation:
    try:
        sampling = json.loads(row["sampling"] or "{}")
    except ValueError:
        sampling = {}
    return Conversation(row["id"], row["title"], row["model"], row["system_prompt"],
                        sampling if isinstance(sampling, dict) else {}, row["created_at"], row["updated_at"])


def _message(row: sqlite3.Row) -> Message:
    stats = None
    if "stats" in row.keys() and row["stats"]:
        try:
            stats = json.loads(row["stats"])
        except ValueError:
            stats = None
    return Message(row["id"], row["conversation_id"], row["role"], row["content"], row["state"],
                   row["created_at"], row["updated_at"], stats)
