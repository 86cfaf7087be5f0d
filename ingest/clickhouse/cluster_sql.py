"""Pure SQL for a cluster target: a MergeTree `{table}_local` on every node, a `Distributed` `{table}` over them.

With a coordinator (ZooKeeper/Keeper) `{table}_local` is a ReplicatedMergeTree on the `{shard}`/`{replica}` macros.

Names pass the same validation and quoting as ingest/sql.py; the table schema itself comes from there
(`create_table_sql`), so single-node and cluster tables cannot drift apart.
"""

from __future__ import annotations

import re

from ingest.clickhouse.sql import columns_sql, create_database_sql, create_table_sql, quote_string
from ingest.core.errors import UsageError
from ingest.core.ids import TableRef, quote_ident
from ingest.core.schema import DEFAULT_SCHEMA, TableSchema

LOCAL_SUFFIX = "_local"
SHARDING_KEY = "cityHash64(id)"
"""Spreads ids evenly over shards; the same id always lands on the same shard."""

SYNC_SETTINGS = ("distributed_foreground_insert", "insert_distributed_sync")
"""The synchronous-Distributed-insert setting, new name first (the old name is all 18.16 knows)."""

_CLUSTER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ENGINE_ARGS = re.compile(r"^\s*Distributed\s*\(\s*([^,]+?)\s*,\s*([^,]+?)\s*,\s*([^,)]+?)\s*[,)]")


def validate_cluster(name: str) -> str:
    """Cluster names come from a flag; refuse anything a <remote_servers> tag would not be."""
    if not _CLUSTER.match(name):
        raise UsageError(f"invalid cluster name {name!r}: use letters, digits, _, - and .")
    return name


def local_ref(ref: TableRef) -> TableRef:
    """The per-node MergeTree table behind the Distributed table `ref`."""
    return TableRef(ref.database, ref.table + LOCAL_SUFFIX)


def _on_cluster(cluster: str | None) -> str:
    return f" ON CLUSTER {quote_ident(validate_cluster(cluster))}" if cluster else ""


def create_database_on_cluster_sql(database: str, cluster: str) -> str:
    """One statement through the distributed DDL queue reaches every node."""
    return f"{create_database_sql(database)}{_on_cluster(cluster)}"


def local_table_sql(
    ref: TableRef, dedup_window: int | None, cluster: str | None = None, schema: TableSchema = DEFAULT_SCHEMA
) -> str:
    """The single-node DDL (same columns, MergeTree ORDER BY id), with ON CLUSTER after the name if asked."""
    sql = create_table_sql(ref, dedup_window, schema)
    head = f"CREATE TABLE IF NOT EXISTS {ref.sql}"
    assert sql.startswith(head), sql
    return head + _on_cluster(cluster) + sql[len(head) :]


def replicated_local_table_sql(
    ref: TableRef, zookeeper_path: str, cluster: str | None = None, schema: TableSchema = DEFAULT_SCHEMA
) -> str:
    """`local_table_sql` with `ReplicatedMergeTree('{zookeeper_path}/{db}/{table}', '{replica}')`: the server
    expands the `{shard}` and `{replica}` macros, so one statement (ON CLUSTER) serves every node. No dedup window:
    replicated tables deduplicate retried blocks themselves.
    """
    sql = local_table_sql(ref, None, cluster, schema)
    path = f"{zookeeper_path.rstrip('/')}/{ref.database}/{ref.table}"
    engine = f"ENGINE = ReplicatedMergeTree({quote_string(path)}, '{{replica}}')"
    assert sql.count("ENGINE = MergeTree") == 1, sql
    return sql.replace("ENGINE = MergeTree", engine)


def macros_sql() -> str:
    return "SELECT macro, substitution FROM system.macros"


def missing_macros(rows: list[tuple[str, str]]) -> list[str]:
    """Which of the macros a replicated table needs a node does not define."""
    have = {name for name, _ in rows}
    return [m for m in ("shard", "replica") if m not in have]


def distributed_table_sql(
    ref: TableRef, cluster: str, on_cluster: bool = False, schema: TableSchema = DEFAULT_SCHEMA
) -> str:
    """`ref` as a Distributed table over `{ref.table}_local` on every node of `cluster`.

    Columns are spelled out rather than `AS local`: an entry node outside the cluster has no local table.
    """
    cols = columns_sql(schema)
    local = local_ref(ref)
    engine = (
        f"Distributed({quote_string(validate_cluster(cluster))}, {quote_string(local.database)}, "
        f"{quote_string(local.table)}, {SHARDING_KEY})"
    )
    where = _on_cluster(cluster) if on_cluster else ""
    return f"CREATE TABLE IF NOT EXISTS {ref.sql}{where} ({cols}) ENGINE = {engine}"


def cluster_nodes_sql(cluster: str) -> str:
    """Every replica of every shard, as the server's <remote_servers> defines them."""
    return (
        "SELECT shard_num, shard_weight, replica_num, host_name, port FROM system.clusters "
        f"WHERE cluster = {quote_string(validate_cluster(cluster))} ORDER BY shard_num, replica_num"
    )


def cluster_names_sql() -> str:
    return "SELECT DISTINCT cluster FROM system.clusters ORDER BY cluster"


def ddl_queue_probe_sql() -> str:
    """Fails where no ZooKeeper/Keeper is configured (no distributed DDL queue: 18.16 out of the box)."""
    return "SELECT count() AS n FROM system.zookeeper WHERE path = '/'"


def sync_setting_sql() -> str:
    names = ", ".join(quote_string(n) for n in SYNC_SETTINGS)
    return f"SELECT name FROM system.settings WHERE name IN ({names})"


def pick_sync_setting(known: list[str]) -> str:
    """The newest name the server knows; 18.16 only has `insert_distributed_sync`."""
    return next((n for n in SYNC_SETTINGS if n in known), SYNC_SETTINGS[-1])


def engines_sql(ref: TableRef) -> str:
    """Engines of the Distributed table and its local table on one node."""
    local = local_ref(ref)
    return (
        "SELECT name, engine, engine_full FROM system.tables WHERE database = "
        f"{quote_string(ref.database)} AND name IN ({quote_string(ref.table)}, {quote_string(local.table)})"
    )


def distributed_target(engine_full: str) -> tuple[str, str, str] | None:
    """(cluster, database, table) a Distributed engine points at, quotes stripped; None if not Distributed."""
    m = _ENGINE_ARGS.match(engine_full)
    if m is None:
        return None
    a, b, c = (x.strip("'\"` ") for x in m.groups())
    return a, b, c


def engine_problem(ref: TableRef, cluster: str, engines: dict[str, tuple[str, str]], node: bool) -> str | None:
    """Why the tables on one node are not ours (None when they are): a wrong engine would take our rows
    somewhere our counts never look. `engines` maps table name → (engine, engine_full); `node` = in the cluster.
    """
    local = local_ref(ref)
    engine, full = engines.get(ref.table, ("", ""))
    if engine != "Distributed":
        what = f"engine {engine}" if engine else "no such table"
        return f"table {ref.key} has {what}; --cluster needs it Distributed over {local.key}"
    want = (cluster, local.database, local.table)
    got = distributed_target(full)
    if got != want:
        return f"table {ref.key} is {full}; expected Distributed over cluster {cluster!r}, table {local.key}"
    if node:
        engine = engines.get(local.table, ("", ""))[0]
        if not engine.endswith("MergeTree"):
            what = f"engine {engine}" if engine else "no such table"
            return f"table {local.key} has {what}; expected a MergeTree table"
    return None


def replica_health_sql(ref: TableRef) -> str:
    """How many replicas of a replicated table ZooKeeper knows, and how many are alive (18.16 has both)."""
    return (
        "SELECT total_replicas, active_replicas FROM system.replicas "
        f"WHERE database = {quote_string(ref.database)} AND table = {quote_string(ref.table)}"
    )


def replicas_down(rows: list[dict[str, object]]) -> int:
    row = rows[0]
    return max(0, int(str(row["total_replicas"])) - int(str(row["active_replicas"])))


def explain_distributed_sql(sql: str) -> str:
    """The plan of a query through a Distributed table including each remote shard's own plan (`distributed = 1`,
    ClickHouse 24.x+), with the indexes every read uses."""
    return f"EXPLAIN distributed = 1, indexes = 1 {sql}"


def explain_reads(plan: str) -> list[str | None]:
    """Per `ReadFromMergeTree` in a plan (the entry's own shard and every remote one), the vector_similarity index
    it reads, or None: the plan names a used skip index as `Name: X` then `Description: vector_similarity ...`."""
    reads: list[str | None] = []
    name: str | None = None
    for raw in plan.splitlines():
        line = raw.strip(" │├└─\t")
        if line.startswith("ReadFromMergeTree"):
            reads.append(None)
            name = None
        elif line.startswith("Name:"):
            name = line[len("Name:") :].strip()
        elif reads and name and line.startswith("Description:") and "vector_similarity" in line:
            reads[-1] = name
    return reads


def delete_mutations_sql(ref: TableRef) -> str:
    """The commands of a table's mutations on one node (a replicated table lists its shard's mutations)."""
    return (
        "SELECT command FROM system.mutations "
        f"WHERE database = {quote_string(ref.database)} AND table = {quote_string(ref.table)}"
    )


DELETED_RANGE = re.compile(
    r"DELETE WHERE (?:\(id >= (-?\d+)\) AND \(id <= (-?\d+)\)|id BETWEEN (-?\d+) AND (-?\d+))", re.IGNORECASE
)
"""Our `delete_range_sql` as a server lists it: 18.16 rewrites BETWEEN into two comparisons, newer ones keep it."""


def deleted_ranges(commands: list[str]) -> list[tuple[int, int]]:
    """Id ranges our own deletes removed, read back from mutation commands (others' mutations are left out)."""
    out = []
    for command in commands:
        if (m := DELETED_RANGE.search(command)) is not None:
            lo, hi = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
            out.append((int(lo), int(hi)))
    return out
