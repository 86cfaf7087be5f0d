"""The soak's fault driver and its summary (issue #19): one thread that injects seeded faults while runs go on.

Network faults go through `FaultProxy`; server-side faults are done to the real server where it can do them:

- `kill9`            SIGKILL the server, start it again on the same data dir 1–4 s later (both servers)
- `max_queries_202`  hold every query slot of a server started with max_concurrent_queries=4 (and, on 18.16,
                     queue_max_wait_ms=0 so it refuses instead of queueing) with sleeping SELECTs for ~2 s
- `parts_252`        26.9: ALTER TABLE ... MODIFY SETTING parts_to_throw_insert=1 for ~2 s, then RESET SETTING.
                     18.16 has no MODIFY SETTING (its parts_to_throw_insert is server-wide, read at start), so
                     there the proxy answers an INSERT with 18.16's exact code-252 reply (`reply_252`)
- `reply_242`        a read-only table: a replicated table says so when its Keeper session is lost; the soak's
                     servers have no Keeper, so the proxy answers an INSERT with the exact code-242 reply
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fault_proxy import NET_FAULTS, FaultProxy

HOLD_SQL = "SELECT sleepEachRow(0.25) FROM system.numbers LIMIT 8 SETTINGS max_block_size = 1 FORMAT Null"
MAX_QUERIES = 4
SERVER_FAULTS = ("kill9", "max_queries_202", "parts_252", "reply_242")
ALL_FAULTS = NET_FAULTS + SERVER_FAULTS


def max_queries_config(version: str) -> str:
    """Server config for the real code-202 fault (the 18.16 profile part is written by the test)."""
    return f"<max_concurrent_queries>{MAX_QUERIES}</max_concurrent_queries>"


class FaultDriver(threading.Thread):
    """Injects one seeded fault every 0.3–1.5 s while `active` is set; `quiet()` waits until the fault at hand
    is over (a killed server is up again)."""

    def __init__(self, proxy: FaultProxy, server: Any, rng: random.Random, database: str) -> None:
        super().__init__(name="fault-driver", daemon=True)
        self.proxy = proxy
        self.server = server
        self.rng = rng
        self.database = database
        self.table = ""
        self.version = str(getattr(server, "version", "18.16"))  # server_fixtures.server_version
        self.active = threading.Event()
        self.done = threading.Event()
        self.busy = threading.Lock()
        self.down: list[tuple[float, float]] = []
        """(from, to) proxy times the server was down."""
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.done.is_set():
            if not self.active.wait(0.1):
                continue
            time.sleep(self.rng.uniform(0.3, 1.5))
            if not self.active.is_set():
                continue
            kind = self.rng.choice(ALL_FAULTS)
            with self.busy:
                try:
                    self.inject(kind)
                except Exception as exc:  # a broken driver must fail the soak, not hang it
                    self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    def quiet(self) -> None:
        """Stop injecting and wait for the fault in progress to end."""
        self.active.clear()
        with self.busy:
            pass
        self.proxy.disarm()
        self.proxy.reopen()
        if not self.proxy.accepts():
            self.errors.append(f"the proxy does not accept on {self.proxy.port} after reopen: {self.proxy.notes[-5:]}")
        if not self.server.running:
            self.server.start()

    def stop(self) -> None:
        self.done.set()
        self.active.clear()
        self.join(timeout=60)

    def inject(self, kind: str) -> None:
        if kind in NET_FAULTS or kind == "reply_242":
            self.proxy.arm(kind)
        elif kind == "kill9":
            self.kill9()
        elif kind == "max_queries_202":
            self.hold_queries()
        elif kind == "parts_252":
            self.too_many_parts()

    def kill9(self, downtime: float | None = None) -> None:
        downtime = self.rng.uniform(1.0, 4.0) if downtime is None else downtime
        self.proxy.record("kill9", detail=f"down {downtime:.1f} s")
        start = self.proxy.now()
        self.server.kill()
        time.sleep(downtime)
        self.down.append((start, self.proxy.now()))  # down until it is started again (it answers soon after)
        self.server.start()

    def hold_queries(self) -> None:
        """Take every query slot with sleeping SELECTs (straight to the server, not through the proxy)."""
        holders = [threading.Thread(target=self._hold, daemon=True) for _ in range(MAX_QUERIES)]
        for t in holders:
            t.start()
        time.sleep(0.2)
        self.proxy.record("max_queries_202", detail=f"{MAX_QUERIES} slots held ~2 s")
        for t in holders:
            t.join(timeout=30)

    def _hold(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.server.query(HOLD_SQL)

    def too_many_parts(self) -> None:
        if self.version == "18.16":
            self.proxy.arm("reply_252")
            return
        ref = f"`{self.database}`.`{self.table}`"
        try:
            self.server.query(f"ALTER TABLE {ref} MODIFY SETTING parts_to_throw_insert = 1")
        except (RuntimeError, OSError):
            return  # the run has not created its table yet: no fault
        self.proxy.record("parts_252", detail="parts_to_throw_insert=1 for 2 s")
        time.sleep(2.0)
        for _ in range(20):
            try:
                self.server.query(f"ALTER TABLE {ref} RESET SETTING parts_to_throw_insert")
                return
            except (RuntimeError, OSError):
                time.sleep(0.5)


@dataclass
class SoakStats:
    """What the soak saw; `table()` is the summary the user reads."""

    seed: int
    server: str
    what: str = "run"
    runs: int = 0
    exits: collections.Counter[int] = field(default_factory=collections.Counter)
    retries: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    rounds: int = 0
    failures: list[str] = field(default_factory=list)
    recover: dict[str, float] = field(default_factory=dict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    wall: float = 0.0
    extra: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Why runs ended 4 (for the summary file)."""

    def add_recovery(self, proxy: FaultProxy, since: float, until: float) -> None:
        """Count the faults that fired in [since, until) and how long each took to recover: until the next
        INSERT the server answered with 200, or (none after it) until the run ended."""
        for f in proxy.injected:
            if not since <= f.at < until:
                continue
            self.counts[f.kind] += 1
            after = [t for t in proxy.insert_ok if f.at < t < until]
            seconds = (min(after) if after else until) - f.at
            self.recover[f.kind] = max(self.recover.get(f.kind, 0.0), seconds)

    @property
    def faults(self) -> int:
        return sum(self.counts.values())

    def table(self) -> str:
        lines = [
            f"soak ({self.what}) seed={self.seed} server={self.server} faults={self.faults} wall={self.wall:.0f} s",
            f"{'fault':<18}{'injected':>9}{'max s to recover':>18}",
        ]
        for kind in (*ALL_FAULTS, "reply_252"):
            if self.counts[kind]:
                lines.append(f"{kind:<18}{self.counts[kind]:>9}{self.recover.get(kind, 0.0):>18.1f}")
        exits = ", ".join(f"{code}: {n}" for code, n in sorted(self.exits.items())) or "-"
        rows: list[tuple[str, str]] = [
            ("rounds", str(self.rounds)),
            ("runs", str(self.runs)),
            ("exit codes", exits),
            ("retries", str(self.retries)),
            ("rows lost", str(self.rows_lost)),
            ("rows duplicated", str(self.rows_duplicated)),
            ("max s to recover", f"{max(self.recover.values(), default=0.0):.1f}"),
            *self.extra,
            ("failures", str(len(self.failures))),
        ]
        lines += [f"{k:<18}{v:>27}" for k, v in rows]
        return "\n".join(lines)


def count_retries(stderr: str) -> int:
    """Retry lines the ingester logged (`...; retry N/M in S s`)."""
    return sum(1 for line in stderr.splitlines() if "; retry " in line)


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()
