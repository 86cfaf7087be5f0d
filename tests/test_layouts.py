"""Layouts (LAION-400M, LAION-5B at 768-d, templates), extra columns, the vector codec and the source-root check,
end to end through the CLI into chdb and checked byte-exact against np.load / pq.read_table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_run import cli
from exact import assert_table_equals, chdb_table, expected_rows, server_table
from http_mirror import HttpMirror
from server_fixtures import server_version

from ingest.clickhouse.sql import create_table_sql, table_problem
from ingest.core.config import SourceConfig
from ingest.core.errors import UsageError
from ingest.core.ids import TableRef
from ingest.core.layout import parse_layout
from ingest.core.schema import TableSchema, column_for, parse_extra_columns
from ingest.stages.download import HttpSource, parse_listing
from ingest.stages.source import LocalSource
from ingest.stages.synth import SynthSpec, write_shard


def laion5b_paths(s: int) -> tuple[str, str, str]:
    return (
        f"img_emb/img_emb_{s:04d}.npy",
        f"text_emb/text_emb_{s:04d}.npy",
        f"laion2B-en-metadata/metadata_{s:04d}.parquet",
    )


TEMPLATE = "vectors/i-{shard:03d}.npy,vectors/t-{shard:03d}.npy,meta/part-{shard:03d}.parquet"


def template_paths(s: int) -> tuple[str, str, str]:
    return (f"vectors/i-{s:03d}.npy", f"vectors/t-{s:03d}.npy", f"meta/part-{s:03d}.parquet")


def run_ok(*args: str) -> str:
    res = cli("run", "--no-progress", *args)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res.stdout + res.stderr


def describe(db: Path, table: str = "laion") -> list[tuple[str, str, str]]:
    from chdb import session

    s = session.Session(str(db))
    try:
        out = s.query(f"SELECT name, type, compression_codec FROM system.columns WHERE table = '{table}'", "TSV")
        return [tuple(line.split("\t")) for line in out.bytes().decode().splitlines()]  # type: ignore[misc]
    finally:
        s.close()


# -- pure ---------------------------------------------------------------------------------------------------
def test_named_layouts_and_templates() -> None:
    five = parse_layout("laion5b")
    assert five.relpaths(7) == laion5b_paths(7)
    assert parse_layout("laion400m").relpaths(12) == (
        "img_emb/img_emb_12.npy",
        "text_emb/text_emb_12.npy",
        "metadata/metadata_12.parquet",
    )
    assert five.shard_of("img_emb_0042.npy") == 42
    assert five.shard_of("img_emb_42.npy") is None  # not how laion5b spells shard 42
    assert five.shard_of("text_emb_0042.npy") is None
    tpl = parse_layout(TEMPLATE)
    assert tpl.relpaths(5) == template_paths(5)
    assert tpl.listing_dir == "vectors"
    assert tpl.shards_in(["i-001.npy", "t-001.npy", "i-010.npy", "i-x.npy", "i-010.npy.part"]) == [1, 10]
    assert parse_listing('<a href="img_emb_0003.npy">x</a><a href="img_emb_3.npy">', five) == [3]
    for bad in (
        "laion6b",
        "a_{shard}.npy,b.npy,c_{shard}.parquet",
        "a_{n}.npy,b_{shard}.npy,c_{shard}.parquet",
        "../a_{shard}.npy,b_{shard}.npy,c_{shard}.parquet",
        "a_{shard:q}.npy,b_{shard}.npy,c_{shard}.p",
    ):
        with pytest.raises(UsageError):
            parse_layout(bad)


def test_one_schema_gives_ddl_arrow_and_check() -> None:
    extras = (column_for("key", pa.string()), column_for("width", pa.int64()), column_for("ok", pa.bool_()))
    assert all(c is not None for c in extras)
    schema = TableSchema(768, tuple(c for c in extras if c is not None), "none")
    ddl = create_table_sql(TableRef("default", "t"), None, schema)
    assert "`image_embedding` Array(Float32) CODEC(NONE)" in ddl and "`key` String, `width` Int64, `ok` UInt8" in ddl
    arrow = schema.arrow_schema()
    assert arrow.names[-3:] == ["key", "width", "ok"] and arrow.field("image_embedding").type.list_size == 768
    rows = [{"name": n, "type": t, "codec_expression": "NONE" if "Array" in t else ""} for n, t in schema.describe()]
    assert table_problem(rows, schema) is None
    assert "expected" in (table_problem(rows[:-1], schema) or "")
    rows[5]["codec_expression"] = ""
    assert "codec" in (table_problem(rows, schema) or "")
    assert column_for("x", pa.list_(pa.int32())) is None
    with pytest.raises(UsageError):
        parse_extra_columns("key,caption")
    with pytest.raises(UsageError):
        parse_extra_columns("key,key")


# -- end to end --------------------------------------------------------------------------------------------
def test_laion5b_layout_768d_byte_exact(tmp_path: Path) -> None:
    src, db = tmp_path / "laion2B-en", tmp_path / "db"
    res = cli("synth", "--out", str(src), "--shards", "0-1", "--rows", "1500", "--dim", "768", "--layout", "laion5b")
    assert res.returncode == 0, res.stderr
    assert (src / "laion2B-en-metadata" / "metadata_0001.parquet").is_file()
    out = run_ok("--source", str(src), "--layout", "laion5b", "--shards", "0-1", "--target", f"chdb:{db}")
    assert "done: 2 shards, 3,000 rows inserted" in out
    got = chdb_table(db)
    assert_table_equals(got, expected_rows(src, [0, 1], laion5b_paths))
    assert len(got.column("image_embedding")[0].as_py()) == 768


def test_template_layout_byte_exact_and_listed(tmp_path: Path) -> None:
    src, db = tmp_path / "src", tmp_path / "db"
    layout = parse_layout(TEMPLATE)
    for s in (3, 12):
        write_shard(src, s, SynthSpec(rows=1200, dim=64, dtype="float32"), layout)
    assert asyncio.run(LocalSource(src, layout).available(None)) == [3, 12]
    out = run_ok("--source", str(src), "--layout", TEMPLATE, "--shards", "3,12", "--target", f"chdb:{db}")
    assert "done: 2 shards, 2,400 rows inserted" in out
    assert_table_equals(chdb_table(db), expected_rows(src, [3, 12], template_paths))


def test_http_mirror_in_laion5b_layout_lists_and_loads(tmp_path: Path) -> None:
    src, db = tmp_path / "src", tmp_path / "db"
    layout = parse_layout("laion5b")
    for s in (0, 2):
        write_shard(src, s, SynthSpec(rows=800, dim=768), layout)
    with HttpMirror(src) as m:

        async def listed() -> list[int]:
            source = HttpSource(SourceConfig(root=m.url, cache_dir=tmp_path / "c", layout=layout))
            try:
                return await source.available(None)
            finally:
                await source.close()

        assert asyncio.run(listed()) == [0, 2]
        run_ok(
            "--source",
            m.url,
            "--layout",
            "laion5b",
            "--shards",
            "0,2",
            "--target",
            f"chdb:{db}",
            "--cache-dir",
            str(tmp_path / "cache"),
        )
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 2], laion5b_paths))


def _with_nulls(path: Path) -> pa.Table:
    """Rewrite a synthetic parquet with nulls in typed columns and a boolean and float32 column added."""
    t = pq.read_table(path)
    n = t.num_rows
    mask = np.arange(n) % 5 == 0
    width = pa.array(np.asarray(t.column("width")), mask=mask)
    t = t.set_column(t.schema.get_field_index("width"), "width", width)
    t = t.append_column("watermark", pa.array([bool(i % 3) for i in range(n)], mask=np.arange(n) % 7 == 0))
    t = t.append_column("aesthetic", pa.array(np.linspace(0, 9, n, dtype=np.float32), mask=np.arange(n) % 4 == 1))
    pq.write_table(t, path)
    return t


EXTRAS = "key,width,height,status,LICENSE,md5,exif,error_message,watermark,aesthetic"


def test_extra_columns_typed_nulls_and_codec(tmp_path: Path) -> None:
    src, db = tmp_path / "src", tmp_path / "db"
    metas = []
    for s in (0, 1):
        files = write_shard(src, s, SynthSpec(rows=2000, dim=32))
        metas.append(_with_nulls(files.meta))
    args = ("--source", str(src), "--shards", "0-1", "--target", f"chdb:{db}")
    run_ok(*args, "--extra-columns", EXTRAS, "--vector-codec", "none")
    cols = {name: (typ, codec) for name, typ, codec in describe(db)}
    assert cols["image_embedding"] == ("Array(Float32)", "CODEC(NONE)")
    assert cols["key"][0] == "String" and cols["width"][0] == "Int64" and cols["watermark"][0] == "UInt8"
    assert cols["aesthetic"][0] == "Float32" and cols["error_message"][0] == "String"
    got = chdb_table(db)
    assert got.column_names[-10:] == EXTRAS.split(",")
    assert_table_equals(got, expected_rows(src, [0, 1]))
    want = pa.concat_tables(metas)
    for name in ("key", "status", "LICENSE", "md5", "exif", "error_message"):
        assert got.column(name).to_pylist() == [v if v is not None else "" for v in want.column(name).to_pylist()]
    assert got.column("width").to_pylist() == [v if v is not None else 0 for v in want.column("width").to_pylist()]
    assert got.column("height").to_pylist() == want.column("height").to_pylist()
    assert got.column("watermark").to_pylist() == [
        int(v) if v is not None else 0 for v in want.column("watermark").to_pylist()
    ]
    exp = (
        np.asarray(want.column("aesthetic").to_pandas(), dtype=np.float32)
        if False
        else np.array([np.nan if v is None else v for v in want.column("aesthetic").to_pylist()], dtype=np.float32)
    )
    assert np.asarray(got.column("aesthetic")).tobytes() == exp.tobytes()
    # reuse: the same flags find the rows already there; other flags are refused before anything is sent
    assert "0 rows inserted" in run_ok(*args, "--extra-columns", EXTRAS, "--vector-codec", "none")
    for other in (("--extra-columns", "key,width"), ("--extra-columns", EXTRAS, "--vector-codec", "zstd"), ()):
        res = cli("run", "--no-progress", *args, *other)
        assert res.returncode == 1, res.stderr  # SchemaMismatchError: fatal, as for any foreign table
        assert "Traceback" not in res.stderr
        assert "table default.laion" in res.stderr, res.stderr


def test_extra_column_unknown_or_untyped_is_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_shard(src, 0, SynthSpec(rows=100, dim=16))
    res = cli(
        "run",
        "--no-progress",
        "--source",
        str(src),
        "--shards",
        "0",
        "--target",
        f"chdb:{tmp_path / 'db'}",
        "--extra-columns",
        "key,nope",
    )
    assert res.returncode == 2 and "has no column nope" in res.stderr and "metadata_0.parquet" in res.stderr


def test_table_of_another_dimension_is_refused(tmp_path: Path) -> None:
    a, b, db = tmp_path / "a", tmp_path / "b", tmp_path / "db"
    write_shard(a, 0, SynthSpec(rows=300, dim=512))
    write_shard(b, 1, SynthSpec(rows=300, dim=768))
    run_ok("--source", str(a), "--shards", "0", "--target", f"chdb:{db}")
    res = cli("run", "--no-progress", "--source", str(b), "--shards", "1", "--target", f"chdb:{db}")
    assert res.returncode == 1, res.stderr
    assert "holds 512-d vectors; this source's are 768-d" in res.stderr
    assert "Traceback" not in res.stderr
    # --dim that disagrees with the files quarantines the shard (exit 3), naming the cause
    res = cli(
        "run",
        "--no-progress",
        "--source",
        str(b),
        "--shards",
        "1",
        "--target",
        f"chdb:{tmp_path / 'db2'}",
        "--dim",
        "512",
    )
    assert res.returncode == 3 and "dimension 768 != expected 512" in res.stderr + res.stdout


def test_missing_source_root_is_one_usage_error(tmp_path: Path) -> None:
    res = cli(
        "run",
        "--no-progress",
        "--source",
        str(tmp_path / "nowhere"),
        "--shards",
        "0-409",
        "--target",
        f"chdb:{tmp_path / 'db'}",
    )
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nowhere" in lines[0] and "does not exist" in lines[0], res.stderr
    (tmp_path / "empty").mkdir()
    with HttpMirror(tmp_path / "empty") as m:
        res = cli(
            "run",
            "--no-progress",
            "--source",
            m.url + "mistyped/",
            "--shards",
            "0-9",
            "--target",
            f"chdb:{tmp_path / 'db'}",
            "--cache-dir",
            str(tmp_path / "c"),
        )
    assert res.returncode == 2, res.stderr
    assert "not found" in res.stderr and "shard" not in res.stderr, res.stderr


@pytest.mark.server
@pytest.mark.parametrize("fmt", ["native", "rowbinary"])
def test_laion5b_extra_columns_over_http(server: Any, server_db: str, tmp_path: Path, fmt: str) -> None:
    """The wire encoders carry the extra columns; the table is created with them (and, on 26.9, with
    `--vector-codec none`: 18.16 has no column codecs, refused in one line before anything is created) and checked
    on reuse."""
    src = tmp_path / "src"
    metas = []
    for s in (0, 1):
        write_shard(src, s, SynthSpec(rows=600, dim=768), parse_layout("laion5b"))
        metas.append(_with_nulls(src / laion5b_paths(s)[2]))
    env = {"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password}
    args = [
        "run",
        "--no-progress",
        "--source",
        str(src),
        "--layout",
        "laion5b",
        "--shards",
        "0-1",
        "--target",
        server.http_url,
        "--database",
        server_db,
        "--format",
        fmt,
        "--state",
        str(tmp_path / "state.json"),
        "--extra-columns",
        "key,width,watermark,aesthetic,exif",
    ]
    codec = ["--vector-codec", "none"]
    if server_version(server) == "18.16":
        res = cli(*args, *codec, env=env)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
        assert errors == ["error: ClickHouse 18.16.1 has no column codecs: drop --vector-codec"], res.stderr
        assert server.query(f"EXISTS TABLE {server_db}.laion") == b"0\n"
        codec = []
    res = cli(*args, *codec, env=env)
    assert res.returncode == 0, res.stderr
    if codec:
        described = server.query(f"DESCRIBE TABLE {server_db}.laion FORMAT JSONEachRow").decode().splitlines()
        codecs = {d["name"]: d["codec_expression"] for d in map(orjson.loads, described)}
        assert codecs["image_embedding"] == codecs["text_embedding"] == "NONE", codecs
        assert codecs["key"] == "", codecs
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1], laion5b_paths))
    raw = server.query(
        f"SELECT key, width, watermark, aesthetic, exif FROM {server_db}.laion ORDER BY id FORMAT JSONEachRow"
    )
    rows = [orjson.loads(line) for line in raw.splitlines()]
    want = pa.concat_tables(metas)
    assert [r["key"] for r in rows] == want.column("key").to_pylist()
    assert [int(r["width"]) for r in rows] == [v or 0 for v in want.column("width").to_pylist()]
    assert [r["watermark"] for r in rows] == [
        int(v) if v is not None else 0 for v in want.column("watermark").to_pylist()
    ]
    assert [r["exif"] for r in rows] == want.column("exif").to_pylist()
    res = cli(*args, *codec, env=env)
    assert res.returncode == 0 and "0 rows inserted" in res.stdout, res.stderr  # the same flags: reused
    res = cli(*args[:-2], *codec, env=env)  # the same table without the extra columns is refused
    assert res.returncode == 1 and "expected" in res.stderr
