"""What a load's process imports: not pandas. `pa.array`, `pa.scalar` and `to_numpy` import it on first use
(0.16–0.23 s), which once held the first segment's body while the server sat idle (ingest/core/arrays.py). Nor rich
without a terminal to draw on (~30 ms before the first row). Nor pydantic, which typer 0.29 imports to build a
TypeAdapter per parameter as it parses a command line (~50 ms of every command's start; pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from exact import assert_table_equals, expected_rows, server_table

RUN_AND_SAY = """
import sys
from ingest.cli.app import main
sys.argv = ["laion-ingest", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(*(f"{m} imported: {m in sys.modules}" for m in ("pandas", "rich", "pydantic")), f"exit: {code}")
"""


def with_nulls(src: Path, shard: int) -> None:
    """Null captions and a null similarity in the shard's parquet: the paths that fill nulls run too."""
    path = src / "metadata" / f"metadata_{shard}.parquet"
    table = pq.read_table(path)
    caption = table.column("caption").to_pylist()
    similarity = table.column("similarity").to_pylist()
    caption[1] = caption[5] = None
    similarity[3] = None
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(caption, pa.string()))
    table = table.set_column(
        table.schema.get_field_index("similarity"), "similarity", pa.array(similarity, pa.float64())
    )
    pq.write_table(table, path)


@pytest.mark.server
@pytest.mark.parametrize("fmt", ["native", "rowbinary"])
def test_a_load_over_http_never_imports_pandas_pydantic_nor_rich_without_a_terminal(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path, fmt: str
) -> None:
    src = make_shards([0, 1], rows=1500, dim=32)
    with_nulls(src, 0)
    args = [
        "run", "--source", str(src), "--shards", "0-1", "--target", server.http_url, "--database", server_db,
        "--segment-rows", "1000", "--format", fmt, "--no-progress", "--state", str(tmp_path / "ledger.json"),
    ]  # fmt: skip
    res = subprocess.run([sys.executable, "-c", RUN_AND_SAY, *args], capture_output=True, text=True, timeout=300)
    said = "pandas imported: False rich imported: False pydantic imported: False exit: 0"
    assert said in res.stdout, (res.stdout, res.stderr[-2000:])
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))


THREADS_AFTER_IMPORT = """
import os
import ingest.cli.app
print(sum(open(f"/proc/self/task/{t}/comm").read().strip() == "python" for t in os.listdir("/proc/self/task")))
"""


def test_the_command_line_starts_no_blas_threads() -> None:
    """OpenBLAS would start a spinning thread per core at `import numpy` (0.05–0.09 s of a load's start) for BLAS
    calls no command makes: the CLI has it start with one, so the main thread is the only one named `python` (the
    BLAS threads are; pyarrow's jemalloc thread is not)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", THREADS_AFTER_IMPORT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
