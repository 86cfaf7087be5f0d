"""Growth: the same synthetic 512-d rows at 1M, 2M and 4M, loaded and indexed as a user would, on the embedded
target (chdb) and on a ClickHouse 26.9 server over HTTP; how each figure grows, and whether the projection
`index --project-rows` makes from the smallest table holds at the largest.

Run: python bench/growth.py [--sizes 1,2,4] [--targets chdb,http] [--data-dir DIR]   (or bench/run.py --sections growth)

Per target and size, in a fresh database: `run` of the first k 1M-row shards (wall, rows/s, peak RSS of our
process, and of the server for HTTP, active parts after the load); `index --recall-target 0.95 --report` (seconds of
tuning, merge, build and check, the structure chosen, its memory as ClickHouse reports it: resident, its
uncompressed bytes, and what the vector index cache counts once loaded; the sizing formula beside it); an independent
`eval --json` (recall@10 against brute force, p50/p99 of indexed and of brute-force search); and where the
tuner chose another structure than at the smallest size, the tuned index is dropped and the smallest size's
structure built with given parameters (build s, CPU, memory once loaded): the projection, a model of one
structure's growth, is held to that (a resumed run adds this build to saved sizes that lack it). The shards are
synthesized once into --data-dir (4 × 1M rows, ~8 GB of float16 npy) and reused. The vector index cache is raised
to 12 GiB (ClickHouse caps it at half this machine's 24 GB) on both targets, so that a 4M-row index is held whole
(at the default 5 GiB, `index` refuses a bf16 index over 4M rows, projected 6.9 GiB with its 1.5 margin).
This process only starts processes and reads small files: it never holds rows (its RSS is inherited at fork).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))  # this checkout's `ingest` (sizing's projection), not an installed one

from growth_report import Ran, Row, print_tables, structure_key  # noqa: E402
from harness import LAION_INGEST, OURS_IS, measure  # noqa: E402 - how a run of ours starts and is measured

PY = sys.executable
SHARD_ROWS = 1_000_000
"""Rows per synthesized shard (--shard-rows: smaller for a quick check of the bench itself)."""
DEFAULT_DATA = Path(os.environ.get("LAION_GROWTH_DATA", "/var/tmp/laion-growth22/src"))
TIMEOUT = 3600.0
CACHE_BYTES = 12 << 30
CACHE_XML = f"<vector_similarity_index_cache_size>{CACHE_BYTES}</vector_similarity_index_cache_size>"


# -- processes ------------------------------------------------------------------------------------------------


def timed(cmd: list[str], cwd: Path) -> Ran:
    """One whole process measured (bench/harness.py), its stderr kept in the work directory's stderr.log."""
    m = measure(" ".join(cmd[:4]), cmd, cwd=cwd, timeout=TIMEOUT, stderr_log=cwd / "stderr.log")
    return Ran(m.seconds, m.peak_rss_mb, m.out, m.cpu_seconds)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ingest(*args: str) -> list[str]:
    return [*LAION_INGEST, *args]


# -- targets --------------------------------------------------------------------------------------------------


class Chdb:
    """The embedded target: a chdb directory; our processes run in `work`, whose config.xml sets the cache."""

    name = "embedded chdb"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.db = work / "db"

    def fresh(self) -> None:
        shutil.rmtree(self.db, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "config.xml").write_text(f"<clickhouse>{CACHE_XML}</clickhouse>")

    @property
    def target(self) -> str:
        return f"chdb:{self.db}"

    def scalar(self, sql: str) -> str:
        return timed([PY, __file__, "sql", str(self.db), sql], self.work).out.strip()

    def server_rss_mb(self) -> float | None:
        return None

    def server_cpu(self) -> float:
        return 0.0

    def stop(self) -> None:
        shutil.rmtree(self.db, ignore_errors=True)


class Http:
    """A 26.9 server (tests/chdb_server.py) in a fresh directory per size, so its peak RSS is this size's."""

    name = "ClickHouse 26.9 over HTTP"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.handle: Any = None

    def fresh(self) -> None:
        from chdb_server import start_ch26

        self.stop()
        self.work.mkdir(parents=True, exist_ok=True)
        self.handle = start_ch26(self.work / "server", extra_config=CACHE_XML)

    @property
    def target(self) -> str:
        return str(self.handle.http_url)

    def scalar(self, sql: str) -> str:
        return str(self.handle.query(sql, timeout=600).decode().strip())

    def server_rss_mb(self) -> float | None:
        status = Path(f"/proc/{self.handle.pid}/status").read_text()
        hwm = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return int(hwm.split()[1]) / 1024 if hwm else None

    def server_cpu(self) -> float:
        """utime + stime of the server process so far (from /proc)."""
        fields = Path(f"/proc/{self.handle.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            shutil.rmtree(self.work / "server", ignore_errors=True)
            self.handle = None


# -- one size -------------------------------------------------------------------------------------------------


class CpuSampler:
    """A loopback server's CPU (utime + stime from /proc), sampled every `period` s with the monotonic time, so
    `index`'s phase spans (its report's phase_spans_monotonic) can be charged their share of the server's work."""

    def __init__(self, read: Callable[[], float], period: float = 0.5) -> None:
        self.read, self.period = read, period
        self.samples: list[tuple[float, float]] = [(time.monotonic(), read())]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append((time.monotonic(), self.read()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self.read()))

    def at(self, t: float) -> float:
        """CPU seconds at monotonic time t (linear between samples)."""
        prev = self.samples[0]
        for cur in self.samples:
            if cur[0] >= t:
                span = cur[0] - prev[0]
                return prev[1] if span <= 0 else prev[1] + (cur[1] - prev[1]) * (t - prev[0]) / span
            prev = cur
        return prev[1]

    def per_phase(self, spans: list[list[Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for phase, start, end in spans:
            out[phase] = out.get(phase, 0.0) + self.at(float(end)) - self.at(float(start))
        return out


def one_size(
    t: Chdb | Http, src: Path, shards: int, project: list[int], queries: int, like: dict[str, Any] | None
) -> Row:
    """One size: load, `index --recall-target 0.95`, eval; then, when `like` (the smallest size's index entry)
    is another structure than the tuner chose here, that structure built here too (see like_for_like)."""
    rows = shards * SHARD_ROWS
    load, parts = load_size(t, src, shards)
    report_path = t.work / f"index-{rows}.json"
    index_args = ["index", "--target", t.target, "--recall-target", "0.95", "--no-progress", "--report"]
    index_args += [str(report_path), *(a for n in project if n > rows for a in ("--project-rows", str(n)))]
    load_before = loadavg()
    index, report, server_cpu = index_run(t, index_args, report_path)
    print(f"  indexed in {index.seconds:.1f} s; eval", flush=True)
    ev = timed(ingest("eval", "--target", t.target, "--queries", str(queries), "--seed", "99", "--json"), t.work)
    evaluation = json.loads(ev.out.strip().splitlines()[-1])
    row = Row(rows, load, t.server_rss_mb(), parts, index, server_cpu, report, evaluation, [load_before, loadavg()])
    if like is not None and structure_key(like) != structure_key(row.entry):
        row.same = like_for_like(t, rows, like)
    return row


def load_size(t: Chdb | Http, src: Path, shards: int) -> tuple[Ran, int]:
    """`run` of the first `shards` shards into a fresh database: the process, and the active parts it left."""
    ensure_shards(src, shards)
    t.fresh()
    state = t.work / "ledger.json"
    state.unlink(missing_ok=True)
    spec = "0" if shards == 1 else f"0-{shards - 1}"
    run = ["run", "--source", str(src), "--shards", spec, "--no-progress", "--state", str(state)]
    load = timed(ingest(*run, "--target", t.target), t.work)
    parts = int(t.scalar("SELECT count() FROM system.parts WHERE database = 'default' AND table = 'laion' AND active"))
    print(f"  {shards * SHARD_ROWS:,} rows loaded in {load.seconds:.1f} s, {parts} parts; indexing", flush=True)
    return load, parts


def index_run(t: Chdb | Http, args: list[str], report_path: Path) -> tuple[Ran, dict[str, Any], float]:
    """`index` with --report: the process, its report and, over HTTP, the server's CPU seconds while it ran (also
    charged to each phase in the report, server_phases_cpu_seconds)."""
    sampler = CpuSampler(t.server_cpu) if isinstance(t, Http) else None
    try:
        ran = timed(ingest(*args), t.work)
    finally:
        if sampler is not None:
            sampler.stop()
    (t.work / f"{report_path.stem}.out").write_text(ran.out)
    report = json.loads(report_path.read_text())
    if sampler is None:
        return ran, report, 0.0
    report["server_phases_cpu_seconds"] = sampler.per_phase(report.get("phase_spans_monotonic", []))
    return ran, report, sampler.samples[-1][1] - sampler.samples[0][1]


def like_for_like(t: Chdb | Http, rows: int, like: dict[str, Any]) -> dict[str, Any]:
    """The smallest size's structure built at this size with given parameters, after the tuned index is dropped:
    the projection from the smallest size is a model of that structure's growth, and the tuner chose another
    one here (its sample density and the memory both move the choice), so this is what the model is held to."""
    q, m, ef = structure_key(like)
    print(f"  the smallest size's structure ({q} M={m} ef_c={ef}) built here as well", flush=True)
    t.scalar("ALTER TABLE default.laion DROP INDEX image_index")
    path = t.work / f"same-{rows}.json"
    fixed = ["--quantization", q, "--m", str(m), "--ef-construction", str(ef)]
    _, report, _ = index_run(t, ["index", "--target", t.target, *fixed, "--no-progress", "--report", str(path)], path)
    return report


# -- printing -------------------------------------------------------------------------------------------------


# -- data and the section -------------------------------------------------------------------------------------


def ensure_shards(data: Path, shards: int) -> None:
    """Shards 0..shards-1 in `data`, synthesized where missing (waiting for one another process is writing)."""
    from big import write_big_shard

    for s in range(shards):
        done = data / "metadata" / f"metadata_{s}.parquet"
        while not done.exists() and (data / "img_emb" / f"img_emb_{s}.npy.tmp").exists():
            time.sleep(5)
        if not done.exists():
            t = time.monotonic()
            write_big_shard(data, s, SHARD_ROWS)
            print(f"(synthesized shard {s}: {SHARD_ROWS:,} rows in {time.monotonic() - t:.0f} s into {data})")


def section_growth(work: Path, sizes: list[int], targets: list[str], data: Path, queries: int) -> None:
    """Each target through every size; the tables (all sizes so far) are printed after each size, and each
    size's figures saved in WORK/TARGET-rows.json: a run given the same --work resumes after the last size."""
    project = [k * SHARD_ROWS for k in sizes]
    for name in targets:
        t: Chdb | Http = Chdb(work / "chdb") if name == "chdb" else Http(work / "http")
        saved = work / f"{name}-rows.json"
        done = [Row.from_dict(d) for d in json.loads(saved.read_text())] if saved.exists() else []
        try:
            for k in sizes:
                rows = k * SHARD_ROWS
                like = done[0].entry if done and done[0].rows < rows else None  # sizes ascend: the smallest
                have = next((r for r in done if r.rows == rows), None)
                if have is not None:
                    if like is None or have.same is not None or structure_key(like) == structure_key(have.entry):
                        continue
                    print(f"{t.name}: {rows:,} rows again, for the smallest size's structure (not in the saved run)")
                    load_size(t, data, k)
                    have.same = like_for_like(t, rows, like)
                else:
                    print(f"{t.name}: {rows:,} rows", flush=True)
                    done.append(one_size(t, data, k, project, queries, like))
                done.sort(key=lambda r: r.rows)
                saved.write_text(json.dumps([r.to_dict() for r in done]))
                version = t.scalar("SELECT version()")
                print_tables(f"growth: {t.name} {version}, {queries} eval queries, index --recall-target 0.95", done)
        finally:
            t.stop()


def main() -> None:
    global SHARD_ROWS
    if len(sys.argv) > 1 and sys.argv[1] == "sql":  # child: one scalar from a chdb directory
        from chdb import session

        s = session.Session(sys.argv[2])
        print(s.query(sys.argv[3], "TSV").bytes().decode().strip())
        s.close()
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,4", help="shards loaded per size (1M rows each), ascending")
    ap.add_argument("--targets", default="chdb,http")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=50, help="eval query rows per size")
    ap.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="rows per shard (size unit)")
    ap.add_argument("--work", type=Path, default=None, help="work dir (default: a temp dir, removed)")
    args = ap.parse_args()
    SHARD_ROWS = args.shard_rows
    work = args.work or Path(tempfile.mkdtemp(prefix="laion-growth-", dir="/var/tmp"))
    print(f"# laion-ingest growth bench — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    print(f"# {OURS_IS}")
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
        section_growth(work, sizes, args.targets.split(","), args.data_dir, args.queries)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
