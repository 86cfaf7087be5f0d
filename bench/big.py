"""The real-size benchmark: one 1,000,000-row shard (512-d float16), whole processes, interleaved rounds.

Run: python bench/big.py [--rows 1000000] [--repeat 3] [--data-dir DIR]   (or bench/run.py --sections big)

  chdb    ours (`laion-ingest run`, fresh dir per round) vs the peer (embedding-reader + pyarrow → chdb, one INSERT
          per batch; bench/peer_embedding_reader.py) vs the engine ceiling (chdb INSERT of the whole shard
          pre-encoded as Native by our encoder, from `file()`)
  server  ours over HTTP to the loopback 18.16 (plain, and --compress zstd) vs `curl -X POST -T shard.native`
          (the same pre-encoded file in one POST)

Per path, min and max over the rounds of: wall, CPU seconds (user+sys of the process; for the server paths also the
server process's CPU during the run, from /proc), peak RSS of the process, active parts right after the load,
bytes sent. The shard and its Native file are cached in --data-dir between runs (a 1M-row shard is ~2 GB of npy
and ~4 GB of Native). This process only starts processes: it never holds rows (its RSS is inherited at fork).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import harness as bench  # noqa: E402 - the shared helpers: measure, ours, start_server, reset_server_table

DEFAULT_DATA = Path(os.environ.get("LAION_BENCH_DATA", "/var/tmp/laion-bench-data"))
CHUNK_ROWS = 100_000
BIG_TIMEOUT = 1800.0


# -- data: synthesized once, in chunks (flat memory), then cached ---------------------------------------------


def write_big_shard(root: Path, shard: int, rows: int, dim: int = 512) -> None:
    """Our synth's vectors and metadata, CHUNK_ROWS at a time, appended to one npy pair and one parquet."""
    import numpy as np
    import pyarrow.parquet as pq

    from ingest.stages.shard import ShardFiles
    from ingest.stages.synth import SynthSpec, metadata, unit, vectors

    files = ShardFiles.in_dir(root, shard)
    centers = unit(np.random.default_rng(0).normal(size=(32, dim)))
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f2")), "fortran_order": False, "shape": (rows, dim)}
    tmp = [p.with_suffix(p.suffix + ".tmp") for p in files.all()]
    for p in tmp:
        p.parent.mkdir(parents=True, exist_ok=True)
    with tmp[0].open("wb") as fi, tmp[1].open("wb") as ft:
        np.lib.format.write_array_header_1_0(fi, header)
        np.lib.format.write_array_header_1_0(ft, header)
        writer = None
        for i, start in enumerate(range(0, rows, CHUNK_ROWS)):
            spec = SynthSpec(rows=min(CHUNK_ROWS, rows - start), dim=dim)
            rng = np.random.default_rng([0, shard, i])
            img, txt = vectors(spec, rng, centers)
            fi.write(img.tobytes())
            ft.write(txt.tobytes())
            meta = metadata(spec, shard, rng)
            if writer is None:
                writer = pq.ParquetWriter(tmp[2], meta.schema)
            writer.write_table(meta, row_group_size=spec.row_group_rows)
        assert writer is not None
        writer.close()
    for t, p in zip(tmp, files.all(), strict=True):
        t.replace(p)


def write_native(root: Path, shards: int, out: Path, batch_rows: int = 65_536) -> None:
    """Shards 0..shards-1 as Native blocks one after another, by our own reader and encoder (what curl and the
    ceiling send: Native is a sequence of blocks, so one file holds them all)."""
    from ingest.clickhouse.wire import encode
    from ingest.core.plan import plan_batches
    from ingest.stages.shard import ShardFiles, read_batches, validate_shard

    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for shard in range(shards):
            valid = validate_shard(ShardFiles.in_dir(root, shard), 512, "fail-shard")
            for _, batch in read_batches(valid, plan_batches(shard, valid.rows, batch_rows), batch_rows):
                for part in encode(batch, "native"):
                    f.write(part)
    tmp.replace(out)


def ensure_data(data: Path, rows: int, shards: int = 1) -> tuple[Path, Path]:
    """The shards 0..shards-1 of `rows` rows each (one directory) and their one Native file, made once."""
    src = data / f"shard-{rows}"
    native = data / (f"shard-{rows}.native" if shards == 1 else f"shards-{shards}x{rows}.native")
    for shard in range(shards):
        if not (src / "metadata" / f"metadata_{shard}.parquet").exists():
            t = time.monotonic()
            subprocess.run([bench.PY, __file__, "synth", str(src), str(rows), str(shard)], check=True)
            print(f"(synthesized shard {shard}, {rows:,} rows, in {time.monotonic() - t:.0f} s into {src})")
    if not native.exists():
        t = time.monotonic()
        subprocess.run([bench.PY, __file__, "native", str(src), str(native), str(shards)], check=True)
        print(f"(encoded {native.stat().st_size / 1e9:.2f} GB of Native in {time.monotonic() - t:.0f} s)")
    return src, native


# -- measuring ------------------------------------------------------------------------------------------------


@dataclass
class Path_:
    """One path of the comparison and every round's figures."""

    label: str
    cmd: Callable[[], list[str]]
    setup: Callable[[], None]
    after: Callable[[], tuple[int | None, int | None]]
    """→ (active parts, bytes sent) once the process has finished."""
    runs: list[bench.Measure] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    parts: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a running process, from /proc/PID/stat."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleave(rounds: int, paths: list[Path_], server_pid: int | None = None) -> None:
    """Warm-up round (untimed), then `rounds` rounds of A, B, C, ... so drift falls on every path alike."""
    for r in range(rounds + 1):
        for p in paths:
            p.setup()
            before = proc_cpu_seconds(server_pid)
            m = bench.measure(p.label, p.cmd())
            after = proc_cpu_seconds(server_pid)
            parts, sent = p.after()
            tag = "warm-up" if r == 0 else f"round {r}"
            print(f"  {tag:8s} {p.label:48s} {m.seconds:7.1f} s wall {m.cpu_seconds:7.1f} s CPU  parts {parts}")
            if r == 0:
                continue
            p.runs.append(m)
            if before is not None and after is not None:
                p.server_cpu.append(after - before)
            if parts is not None:
                p.parts.append(parts)
            if sent is not None:
                p.sent.append(sent)


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "—"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"  # equal once formatted (4189.2 and 4189.4 MB): one figure


def print_paths(title: str, paths: list[Path_]) -> None:
    print(f"\n## {title}")
    print(
        f"{'path':48s} {'wall s':>12s} {'CPU s':>12s} {'server CPU s':>13s} {'peak RSS MB':>12s} {'parts':>8s} "
        f"{'MB sent':>9s}"
    )
    for p in paths:
        print(
            f"{p.label:48s} {span([m.seconds for m in p.runs]):>12s} {span([m.cpu_seconds for m in p.runs]):>12s} "
            f"{span(p.server_cpu):>13s} {span([m.peak_rss_mb for m in p.runs], '{:.0f}'):>12s} "
            f"{span([float(x) for x in p.parts], '{:.0f}'):>8s} {span([x / 1e6 for x in p.sent], '{:.0f}'):>9s}"
        )


def wall_ratio(a: Path_, b: Path_) -> str:
    lo = min(m.seconds for m in a.runs) / min(m.seconds for m in b.runs)
    hi = max(m.seconds for m in a.runs) / max(m.seconds for m in b.runs)
    return f"{lo:.2f} (min/min), {hi:.2f} (max/max)"


# -- the two sections -----------------------------------------------------------------------------------------


def chdb_parts(db: Path) -> int:
    out = subprocess.run([bench.PY, __file__, "parts", str(db)], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def report_bytes(report: Path) -> int:
    return int(json.loads(report.read_text())["bytes_sent"])


def big_chdb(work: Path, src: Path, native: Path, rows: int, repeat: int) -> None:
    db = work / "db"

    def reset() -> None:
        bench.fresh(db)()
        Path(str(db) + ".ledger.json").unlink(missing_ok=True)

    def parts() -> tuple[int | None, int | None]:
        return chdb_parts(db), None

    paths = [
        Path_(f"ours → chdb ({rows:,} rows)", lambda: bench.ours_chdb(src, db, 0), reset, parts),
        Path_(
            "ours → chdb, --merges during",
            lambda: bench.ours_chdb(src, db, 0, "--merges", "during"),
            reset,
            parts,
        ),
        Path_(
            "peer: embedding-reader + pyarrow → chdb",
            lambda: [bench.PY, str(HERE / "peer_embedding_reader.py"), str(db), str(src), "0"],
            reset,
            parts,
        ),
        Path_(
            "INSERT pre-encoded Native file, chdb (ceiling)",
            lambda: [bench.PY, __file__, "ceiling", str(db), str(native)],
            reset,
            parts,
        ),
    ]
    interleave(repeat, paths)
    print_paths(f"5. embedded chdb, one {rows:,}-row shard (min–max of {repeat} interleaved rounds)", paths)
    ours, during, peer, ceil = paths
    print(f"ours / peer wall = {wall_ratio(ours, peer)}   ours / ceiling wall = {wall_ratio(ours, ceil)}")
    print(f"ours --merges during / peer wall = {wall_ratio(during, peer)}")
    print(
        f"parts after the load: ours {span([float(x) for x in ours.parts], '{:.0f}')}, "
        f"--merges during {span([float(x) for x in during.parts], '{:.0f}')}, "
        f"peer {span([float(x) for x in peer.parts], '{:.0f}')}"
    )


def big_server(work: Path, src: Path, native: Path, rows: int, repeat: int) -> None:
    handle = bench.start_server(work)
    if handle is None:
        return
    try:
        handle.query("CREATE DATABASE IF NOT EXISTS bench")
        state = work / "ledger.json"
        report = work / "report.json"
        reset = bench.reset_server_table(handle, "bench", state)

        def parts() -> int:
            sql = "SELECT count() FROM system.parts WHERE database = 'bench' AND table = 'laion' AND active"
            return int(handle.query(sql).strip())

        def ours_after() -> tuple[int | None, int | None]:
            return parts(), report_bytes(report)

        def curl_after() -> tuple[int | None, int | None]:
            return parts(), native.stat().st_size

        url = f"{handle.http_url}/?query=" + "INSERT%20INTO%20bench.laion%20FORMAT%20Native"
        paths = [
            Path_(
                f"ours → HTTP 18.16 ({rows:,} rows)",
                lambda: bench.ours_http(src, handle, "bench", "0", state, "--report", str(report)),
                reset,
                ours_after,
            ),
            Path_(
                "ours → HTTP 18.16, --compress zstd",
                lambda: bench.ours_http(
                    src, handle, "bench", "0", state, "--report", str(report), "--compress", "zstd"
                ),
                reset,
                ours_after,
            ),
            Path_(
                "curl -X POST -T shard.native (ceiling)",
                lambda: ["curl", "-sSf", "-X", "POST", "-T", str(native), url],
                reset,
                curl_after,
            ),
        ]
        interleave(repeat, paths, handle.pid)
        version = handle.query("SELECT version()").decode().strip()
        print_paths(f"6. ClickHouse {version} over HTTP, one {rows:,}-row shard (min–max of {repeat} rounds)", paths)
        ours, zstd, curl = paths
        print(f"ours / curl wall = {wall_ratio(ours, curl)}   ours zstd / curl wall = {wall_ratio(zstd, curl)}")
        print(
            f"parts: ours {span([float(x) for x in ours.parts], '{:.0f}')}, curl "
            f"{span([float(x) for x in curl.parts], '{:.0f}')}; our peak RSS "
            f"{span([m.peak_rss_mb for m in ours.runs], '{:.0f}')} MB; bytes/row sent: plain "
            f"{min(ours.sent) / rows:,.0f}, zstd {min(zstd.sent) / rows:,.0f} "
            f"({min(ours.sent) / min(zstd.sent):.2f}× fewer)"
        )
    finally:
        handle.stop()


def section_big(work: Path, rows: int, repeat: int, data: Path = DEFAULT_DATA, only: str = "chdb,server") -> None:
    bench.PROCESS_TIMEOUT = max(bench.PROCESS_TIMEOUT, BIG_TIMEOUT)
    src, native = ensure_data(data, rows)
    if "chdb" in only:
        big_chdb(work / "chdb", src, native, rows, repeat)
    if "server" in only:
        big_server(work / "server", src, native, rows, repeat)


# -- child-process entry points and the command line ----------------------------------------------------------


def child(mode: str, args: list[str]) -> None:
    if mode == "synth":
        write_big_shard(Path(args[0]), int(args[2]) if len(args) > 2 else 0, int(args[1]))
    elif mode == "native":
        write_native(Path(args[0]), int(args[2]) if len(args) > 2 else 1, Path(args[1]))
    elif mode in ("ceiling", "parts"):
        from chdb import session
        from tutorial_load import DDL

        s = session.Session(args[0])
        if mode == "ceiling":
            s.query(DDL)
            s.query(f"INSERT INTO laion SELECT * FROM file('{args[1]}', Native)")
        else:
            res = s.query("SELECT count() FROM system.parts WHERE table = 'laion' AND active", "CSV")
            print(res.bytes().decode().strip())
        s.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("synth", "native", "ceiling", "parts"):
        child(sys.argv[1], sys.argv[2:])
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds per path (after one warm-up)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="cache for the shard and its Native file")
    ap.add_argument("--only", default="chdb,server", help="chdb, server or both")
    args = ap.parse_args()
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="laion-big-"))
    print(f"# laion-ingest big bench — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    print(f"# {bench.OURS_IS}")
    try:
        section_big(work, args.rows, max(1, args.repeat), args.data_dir, args.only)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
