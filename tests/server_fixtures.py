"""Fixtures that start a real loopback clickhouse-server (filled in by the HTTP target work)."""
