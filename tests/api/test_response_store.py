"""The SQLite store on its own: round trip, one transaction per write, runs left live by a
stopped server marked failed, and writers on several threads."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from gptoss_serve.api.response_store import ResponseStore, StoredResponse


def _rec(rid: str, status: str = "completed", parent: str | None = None) -> StoredResponse:
    body = {"id": rid, "status": status, "created_at": 1.0, "previous_response_id": parent}
    return StoredResponse(rid, body, [{"id": "msg_1", "type": "message"}],
                          [{"role": "user", "content": "hi"}], [[1, 2, 3]], parent or rid)


def test_round_trip_and_events(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite3")
    events = [{"type": "response.created", "sequence_number": i} for i in range(4)]
    store.save(_rec("resp_a"), events)
    got = store.get("resp_a")
    assert got == _rec("resp_a")
    assert [e["sequence_number"] for e in store.events("resp_a", 1)] == [2, 3]
    assert store.delete("resp_a") and store.get("resp_a") is None
    assert store.events("resp_a") == [] and not store.delete("resp_a")


def test_a_failed_write_leaves_nothing(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite3")
    with pytest.raises(KeyError):  # the second event has no sequence_number
        store.save(_rec("resp_b"), [{"sequence_number": 0}, {}])
    store.save(_rec("resp_c"), [{"sequence_number": 0}, {"sequence_number": 1}])
    with pytest.raises(sqlite3.Error):  # a bad row inside the transaction
        store._tx([("INSERT INTO events VALUES (?,?,?)", ("resp_c", 5, "{}")),
                   ("INSERT INTO nowhere VALUES (1)", ())])
    assert store.get("resp_b") is None and store.events("resp_b") == []
    assert [e["sequence_number"] for e in store.events("resp_c")] == [0, 1]


def test_reopen_marks_interrupted_runs_failed(tmp_path):
    path = tmp_path / "r.sqlite3"
    first = ResponseStore(path)
    first.save(_rec("resp_live", status="in_progress"))
    first.save(_rec("resp_done"))
    first.close()
    again = ResponseStore(path)
    live = again.get("resp_live")
    assert live.body["status"] == "failed" and live.body["error"]["code"] == "server_error"
    assert again.get("resp_done").body["status"] == "completed"


def test_writers_on_many_threads(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite3")
    store.save(_rec("resp_parent"))

    def child(i: int) -> None:
        for j in range(10):
            rid = f"resp_{i}_{j}"
            store.save(_rec(rid, parent="resp_parent"),
                       [{"sequence_number": k, "i": i} for k in range(5)])
            assert store.get("resp_parent").body["status"] == "completed"

    threads = [threading.Thread(target=child, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        for j in range(10):
            assert store.get(f"resp_{i}_{j}").conversation_id == "resp_parent"
            assert [e["i"] for e in store.events(f"resp_{i}_{j}")] == [i] * 5
