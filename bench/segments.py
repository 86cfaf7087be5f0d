"""Segments on a big shard: wall, peak RSS and parts of ours against the per-batch INSERT path and curl's one POST.

    python bench/segments.py --source DIR [--native FILE] [--sections chdb,http] [--rows N]

DIR holds shard 0 in LAION's layout (e.g. `laion-ingest synth --rows 1000000`); FILE is that shard pre-encoded
as Native blocks (the server's ceiling: one POST with curl). Whole processes, figures as printed; the machine is
shared, so compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import LAION_INGEST, OURS_IS, Measure, measure  # noqa: E402 - how a run of ours starts and is measured

PARTS = (
    "SELECT count() AS parts, max(max_block_number) - min(min_block_number) + 1 AS inserts "
    "FROM system.parts WHERE database = '{db}' AND table = 'laion' AND active"
)


def timed(cmd: list[str]) -> Measure:
    return measure(" ".join(cmd[:4]), cmd, timeout=900)


def ours(source: str, target: str, state: Path, *extra: str) -> list[str]:
    return [*LAION_INGEST, "run", "--source", source, "--shards", "0", "--target", target,
            "--no-progress", "--state", str(state), *extra]  # fmt: skip


def chdb_parts(path: Path) -> dict[str, int]:
    from chdb import session

    s = session.Session(str(path))
    try:
        return dict(json.loads(s.query(PARTS.format(db="default"), "JSONEachRow").bytes()))
    finally:
        s.close()


def section_chdb(source: str, work: Path) -> None:
    runs = {"ours, segments (default)": (), "ours, one INSERT per 8,192-row batch": ("--segment-rows", "8192")}
    for label, extra in runs.items():
        db = work / f"chdb-{len(extra)}"
        m = timed(ours(source, f"chdb:{db}", work / f"ledger-chdb-{len(extra)}.json", *extra))
        print(f"chdb   {label:40s} {m.seconds:7.1f} s  peak RSS {m.peak_rss_mb:6.0f} MB  {chdb_parts(db)}  "
              f"{m.cpu_seconds:.1f} CPU-s", flush=True)  # fmt: skip
        shutil.rmtree(db, ignore_errors=True)


def section_http(source: str, native: str | None, work: Path) -> None:
    from server_fixtures import start_clickhouse

    handle = start_clickhouse(work / "server")
    try:
        variants = {"ours, segments (default)": (), "ours, --insert-concurrency 1": ("--insert-concurrency", "1")}
        for i, (label, extra) in enumerate(variants.items()):
            db = f"b{i}"
            handle.query(f"CREATE DATABASE {db}")
            cmd = ours(source, handle.http_url, work / f"ledger-http-{i}.json", "--database", db, *extra)
            m = timed(cmd)
            parts = json.loads(handle.query(PARTS.format(db=db) + " FORMAT JSONEachRow"))
            print(f"18.16  {label:40s} {m.seconds:7.1f} s  peak RSS {m.peak_rss_mb:6.0f} MB  {parts}  "
                  f"ours {m.cpu_seconds:.1f} CPU-s", flush=True)  # fmt: skip
        if native:
            handle.query("CREATE DATABASE curl")
            handle.query(
                "CREATE TABLE curl.laion (id Int64, url String, caption String, NSFW String, similarity Float32, "
                "image_embedding Array(Float32), text_embedding Array(Float32)) ENGINE = MergeTree ORDER BY id"
            )
            url = f"{handle.http_url}/?query=INSERT%20INTO%20curl.laion%20FORMAT%20Native"
            curl = timed(["curl", "-sS", "--fail", "-X", "POST", "-T", native, url])  # streams the file
            parts = json.loads(handle.query(PARTS.format(db="curl") + " FORMAT JSONEachRow"))
            print(f"18.16  {'curl, whole shard as Native, one POST':40s} {curl.seconds:7.1f} s  {'':19s}{parts}",
                  flush=True)  # fmt: skip
    finally:
        handle.stop()


def section_rss(sources: list[str], work: Path, block_rows: list[str]) -> None:
    """Peak RSS of ours against the server (another process) by shard size and block size."""
    from server_fixtures import start_clickhouse

    handle = start_clickhouse(work / "server-rss")
    try:
        for i, (source, rows) in enumerate((s, r) for s in sources for r in block_rows):
            db = f"r{i}"
            handle.query(f"CREATE DATABASE {db}")
            cmd = ours(source, handle.http_url, work / f"ledger-rss-{i}.json", "--database", db, "--batch-rows", rows)
            m = timed(cmd)
            print(f"18.16  rss {Path(source).name:16s} --batch-rows {rows:6s} {m.seconds:7.1f} s  peak RSS "
                  f"{m.peak_rss_mb:6.0f} MB  {m.cpu_seconds:.1f} CPU-s", flush=True)  # fmt: skip
            handle.query(f"DROP DATABASE {db}")
    finally:
        handle.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--native")
    ap.add_argument("--sections", default="chdb,http")
    ap.add_argument("--rss-sources", default="", help="comma-separated shard dirs for the rss section")
    ap.add_argument("--block-rows", default="8192,4096")
    args = ap.parse_args()
    print(f"# {OURS_IS}")
    work = Path(tempfile.mkdtemp(prefix="segbench-"))
    try:
        sections = args.sections.split(",")
        if "chdb" in sections:
            section_chdb(args.source, work)
        if "http" in sections:
            section_http(args.source, args.native, work)
        if "rss" in sections:
            section_rss(args.rss_sources.split(","), work, args.block_rows.split(","))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
