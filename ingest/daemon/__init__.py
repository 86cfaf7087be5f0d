"""The long-running service: polls a source, loads new shards through `ingest.load`, serves /healthz /readyz
/metrics. Imports load and below; its command line lives in `ingest.cli`.
"""
