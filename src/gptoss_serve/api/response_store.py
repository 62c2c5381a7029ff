"""The Responses API's state: an embedded SQLite database (one file, or `:memory:`).

Owns the tables and every read and write of them. One row per response holds the response object
as sent to clients, the input items of its request, the harmony messages of the whole conversation
up to and including its own output (so a `previous_response_id` chain renders from one row, and
deleting an ancestor does not break its descendants), and the exact token ids the model generated
in each of its model calls. Streamed events are kept per response for `starting_after` resumes.
Every write is one transaction; rows are never updated in place by two writers at once (one
connection behind a lock), so concurrent children of one parent only ever read the parent.
A response left `queued`/`in_progress` by a stopped server is marked `failed` when the store opens.
Knows nothing of HTTP, harmony rendering or the engine.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    previous_response_id TEXT,
    conversation_id TEXT NOT NULL,
    body TEXT NOT NULL,
    input_items TEXT NOT NULL,
    messages TEXT NOT NULL,
    token_ids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    response_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (response_id, seq)
);
"""
LIVE = ("queued", "in_progress")


@dataclass
class StoredResponse:
    id: str
    body: dict[str, Any]  # the response object
    input_items: list[dict[str, Any]]
    messages: list[dict[str, Any]]  # harmony messages of the conversation through this response
    token_ids: list[list[int]]  # generated ids of each model call of this response
    conversation_id: str  # the first response of the chain (the tools' session id)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ResponseStore:
    """SQLite-backed store. Safe to share between the event loop and worker threads."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(SCHEMA)
        self._fail_interrupted()

    # ---- writing -------------------------------------------------------------------------
    def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run statements as one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def save(self, rec: StoredResponse, events: list[dict[str, Any]] | None = None) -> None:
        """Insert or replace a response (and append `events`), in one transaction."""
        body = rec.body
        row = (rec.id, float(body.get("created_at", 0)), str(body.get("status")),
               body.get("previous_response_id"), rec.conversation_id, _dumps(body),
               _dumps(rec.input_items), _dumps(rec.messages), _dumps(rec.token_ids))
        stmts = [("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?)", row)]
        stmts += self._event_rows(rec.id, events or [])
        self._tx(stmts)

    def append_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        if events:
            self._tx(self._event_rows(response_id, events))

    @staticmethod
    def _event_rows(rid: str, events: list[dict[str, Any]]) -> list[tuple[str, tuple]]:
        sql = "INSERT OR REPLACE INTO events VALUES (?,?,?)"
        return [(sql, (rid, int(e["sequence_number"]), _dumps(e))) for e in events]

    def delete(self, response_id: str) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
            self._db.execute("DELETE FROM events WHERE response_id = ?", (response_id,))
            self._db.execute("COMMIT")
        return cur.rowcount > 0

    def _fail_interrupted(self) -> None:
        """Responses a previous server left running can never finish: mark them failed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body FROM responses WHERE status IN (?, ?)", LIVE).fetchall()
        for rid, raw in rows:
            body = json.loads(raw)
            body["status"] = "failed"
            body["error"] = {"code": "server_error",
                             "message": "the server stopped before this response finished"}
            self._tx([("UPDATE responses SET status = 'failed', body = ? WHERE id = ?",
                       (_dumps(body), rid))])

    # ---- reading -------------------------------------------------------------------------
    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, body, input_items, messages, token_ids, conversation_id "
                "FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            return None
        rid, body, items, messages, ids, conv = row
        return StoredResponse(rid, json.loads(body), json.loads(items), json.loads(messages),
                              json.loads(ids), conv)

    def events(self, response_id: str, after: int = -1) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM events WHERE response_id = ? AND seq > ? ORDER BY seq",
                (response_id, after)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
