"""The search service: clip-retrieval's back-end protocol (`/indices-list`, `/knn-service`, `/metadata`) on a
loaded table, for clip-front, ClipClient and scripts. An edge like cli/ and daemon/: it may import vector, sinks,
clickhouse, core and the CLIP encoder of udf; nothing imports it but cli and daemon. No typer or rich here.
"""
