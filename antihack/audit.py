"""The audit store: every flagged tool call of a run, in SQLite (the run directory's ``audit.sqlite``).

One row per flag in ``flags`` (rule hits, judge verdict, action, task/rollout ids, training step,
weight version, the call and its recent context, timestamp, run name) and per-step call counts in
``checks`` (the denominator of hack rates). The store is safe to use from several processes:
the database runs in WAL mode, every write is one short ``BEGIN IMMEDIATE`` transaction with a
busy timeout, and each process opens its own connection (a store object may be pickled to a Ray
worker; the connection is reopened there).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    run TEXT NOT NULL,
    task_id TEXT NOT NULL,
    rollout_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    weight_version INTEGER NOT NULL,
    tool TEXT NOT NULL,
    call_json TEXT NOT NULL,
    context_json TEXT NOT NULL,
    rules_json TEXT NOT NULL,
    rule_ids TEXT NOT NULL,
    category TEXT NOT NULL,
    verdict TEXT NOT NULL,
    confidence REAL NOT NULL,
    rationale TEXT NOT NULL,
    judge_backend TEXT NOT NULL,
    judge_cached INTEGER NOT NULL,
    judge_error TEXT,
    action TEXT NOT NULL,
    dummy TEXT,
    shadow_write INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_run_step ON flags(run, step);
CREATE INDEX IF NOT EXISTS flags_category ON flags(category);
CREATE TABLE IF NOT EXISTS checks (
    run TEXT NOT NULL,
    step INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (run, step)
);
"""

COLUMNS = ("id", "ts", "run", "task_id", "rollout_id", "step", "weight_version", "tool", "call_json",
           "context_json", "rules_json", "rule_ids", "category", "verdict", "confidence", "rationale",
           "judge_backend", "judge_cached", "judge_error", "action", "dummy", "shadow_write")


class AuditStore:
    """Append-only store of guard events for one run (``run_name``) in a SQLite file."""

    def __init__(self, path: str | os.PathLike, run_name: str = "", create: bool = True) -> None:
        self.path = Path(path)
        self.run_name = run_name
        if not create and not self.path.exists():
            raise FileNotFoundError(f"audit database {self.path} does not exist")
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection().executescript(SCHEMA)

    # --- connection ----------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.row_factory = sqlite3.Row
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    class _Txn:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _write(self) -> "_Txn":
        return AuditStore._Txn(self._connection())

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "run_name": self.run_name}

    def __setstate__(self, state: dict) -> None:
        self.path, self.run_name = state["path"], state["run_name"]
        self._conn, self._pid = None, -1

    # --- writes --------------------------------------------------------------------------------
    def record(self, event: dict[str, Any]) -> int:
        """Store one guard event (the dict ``EpisodeGuard.check`` builds); returns its row id."""
        row = (
            float(event.get("ts", time.time())), str(event.get("run", self.run_name)), str(event.get("task_id", "")),
            str(event.get("rollout_id", "")), int(event.get("step", -1)), int(event.get("weight_version", -1)),
            str(event.get("tool", event.get("call", {}).get("name", ""))),
            json.dumps(event.get("call", {}), ensure_ascii=False),
            json.dumps(list(event.get("recent_context", [])), ensure_ascii=False),
            json.dumps(event.get("rules", []), ensure_ascii=False), ",".join(event.get("rule_ids", [])),
            str(event.get("category", "")), str(event.get("verdict", "")), float(event.get("confidence", 0.0)),
            str(event.get("rationale", "")), str(event.get("judge_backend", "")), int(bool(event.get("judge_cached"))),
            event.get("judge_error"), str(event.get("action", "")), event.get("dummy_observation"),
            int(bool(event.get("shadow_write"))),
        )
        with self._write() as conn:
            cur = conn.execute(f"INSERT INTO flags ({', '.join(COLUMNS[1:])}) VALUES "
                               f"({', '.join('?' * (len(COLUMNS) - 1))})", row)
            return int(cur.lastrowid)

    def record_checks(self, counts: dict[int, int]) -> None:
        """Add ``{step: number of calls checked}`` to the per-step call counts of this run."""
        with self._write() as conn:
            conn.executemany("INSERT INTO checks (run, step, calls) VALUES (?, ?, ?) "
                             "ON CONFLICT(run, step) DO UPDATE SET calls = calls + excluded.calls",
                             [(self.run_name, int(s), int(n)) for s, n in counts.items()])

    # --- reads ---------------------------------------------------------------------------------
    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["call"] = json.loads(d.pop("call_json"))
        d["recent_context"] = json.loads(d.pop("context_json"))
        d["rules"] = json.loads(d.pop("rules_json"))
        d["rule_ids"] = [r for r in d["rule_ids"].split(",") if r]
        d["judge_cached"] = bool(d["judge_cached"])
        d["shadow_write"] = bool(d["shadow_write"])
        return d

    def query(self, run: str | None = None, category: str | None = None, verdict: str | None = None,
              action: str | None = None, min_step: int | None = None, max_step: int | None = None,
              limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        return list(self.iter(run, category, verdict, action, min_step, max_step, limit, newest_first))

    def iter(self, run: str | None = None, category: str | None = None, verdict: str | None = None,
             action: str | None = None, min_step: int | None = None, max_step: int | None = None,
             limit: int | None = None, newest_first: bool = False) -> Iterator[dict[str, Any]]:
        where, args = [], []
        for col, value in (("run", run), ("category", category), ("verdict", verdict), ("action", action)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if min_step is not None:
            where.append("step >= ?")
            args.append(min_step)
        if max_step is not None:
            where.append("step <= ?")
            args.append(max_step)
        sql = "SELECT * FROM flags" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        for row in self._connection().execute(sql, args):
            yield self._decode(row)

    def get(self, flag_id: int) -> dict[str, Any] | None:
        row = self._connection().execute("SELECT * FROM flags WHERE id = ?", (int(flag_id),)).fetchone()
        return self._decode(row) if row is not None else None

    def runs(self) -> list[str]:
        return [r[0] for r in self._connection().execute("SELECT DISTINCT run FROM flags ORDER BY run")]

    def stats(self, run: str | None = None) -> dict[str, Any]:
        """Counts per category, verdict, action and training step (with call counts when known)."""
        conn = self._connection()
        cond, args = ("WHERE run = ?", (run,)) if run is not None else ("", ())

        def grouped(col: str) -> dict[str, int]:
            return {str(k): int(n) for k, n in conn.execute(
                f"SELECT {col}, COUNT(*) FROM flags {cond} GROUP BY {col} ORDER BY COUNT(*) DESC, {col}", args)}

        by_step: dict[int, dict[str, int]] = {}
        for step, flagged, confirmed, blocked in conn.execute(
                f"SELECT step, COUNT(*), SUM(verdict = 'hack' AND action IN ('block', 'observe')), "
                f"SUM(action = 'block') "
                f"FROM flags {cond} GROUP BY step ORDER BY step", args):
            by_step[int(step)] = {"flagged": int(flagged), "confirmed": int(confirmed or 0),
                                  "blocked": int(blocked or 0), "calls": 0}
        for step, calls in conn.execute(f"SELECT step, SUM(calls) FROM checks {cond} GROUP BY step", args):
            by_step.setdefault(int(step), {"flagged": 0, "confirmed": 0, "blocked": 0, "calls": 0})["calls"] = int(calls)
        total = conn.execute(f"SELECT COUNT(*) FROM flags {cond}", args).fetchone()[0]
        return {"total": int(total), "by_category": grouped("category"), "by_verdict": grouped("verdict"),
                "by_action": grouped("action"), "by_step": dict(sorted(by_step.items()))}
