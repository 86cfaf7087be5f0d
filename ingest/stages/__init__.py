"""The read side of a load: sources (local, HTTP, object stores), downloads, `.npy` parsing, shard validation and
windowed reading, Arrow batches, synthetic shards. Imports `ingest.core` and `ingest.clickhouse` (schema), never
sinks, load or the edge.
"""
