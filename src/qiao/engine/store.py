"""The local state store: SQLite, one table per CNM object kind.

The daemon reads everything into memory once at start; afterwards the store
is only written, inside one transaction per operation, after the kernel work
succeeded (moby's "storeUpdate last").  UNIQUE constraints are the last line
of defence against handing out a name or an address twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS containers (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attachments (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docker_networks (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY, network_id TEXT NOT NULL, address TEXT NOT NULL, body TEXT NOT NULL,
    UNIQUE (network_id, address));
"""

KINDS = ("networks", "containers", "endpoints", "attachments", "docker_networks", "images")


class Writer:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        body = json.dumps(obj, sort_keys=True)
        if kind == "endpoints":
            self._db.execute(
                "INSERT OR REPLACE INTO endpoints (id, network_id, address, body) VALUES (?, ?, ?, ?)",
                (obj["id"], obj["network_id"], obj["address"], body),
            )
        else:
            self._db.execute(f"INSERT OR REPLACE INTO {kind} (id, name, body) VALUES (?, ?, ?)", (obj["id"], obj["name"], body))

    def delete(self, kind: str, obj_id: str) -> None:
        self._db.execute(f"DELETE FROM {kind} WHERE id = ?", (obj_id,))


class Store:
    def __init__(self, path: str):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # root's alone: it holds environments
        os.chmod(path, 0o600)  # SQLite gives its -wal and -shm files the same mode
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def load(self, kind: str) -> list[dict[str, Any]]:
        assert kind in KINDS
        return [json.loads(row[0]) for row in self._db.execute(f"SELECT body FROM {kind}")]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Writer]:
        """All writes in the body land together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield Writer(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
