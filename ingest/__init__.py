"""laion-ingest: stream LAION-layout CLIP embeddings into ClickHouse, exactly once."""

__version__ = "0.1.0"
