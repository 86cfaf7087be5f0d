"""What every layer shares and nothing else owns: the error tree (with named ClickHouse codes), config objects
per concern, ids and shard/batch plans, the table schema, the retry policy, metrics. Imports no other package of
`ingest`; every other layer may import it.
"""
