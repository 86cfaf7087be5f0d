"""Vector search on a loaded table: building HNSW indexes (with progress through a display protocol), search,
recall evaluation, the CLIP encoder client. Imports sinks and below; never load or the edge.
"""
