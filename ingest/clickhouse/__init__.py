"""ClickHouse's dialect, pure: SQL builders (tables, clusters, vector indexes), the Native/RowBinary wire encoder,
replies and error parsing. No I/O: it turns our values into the bytes and text a server reads. Imports only
`ingest.core`.
"""
