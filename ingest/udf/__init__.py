"""CLIP ViT-B/32 encoders run as ClickHouse executable UDFs (`encode-text`, `encode-image`).

Nothing here imports torch at package import: the core ingester must work without the `clip` extra, so
torch, Pillow and the tokenizer are imported only on the program path (`ingest.udf.program`).
"""
