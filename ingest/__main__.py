"""`python -m ingest` is the same program as `laion-ingest`."""

from ingest.cli.app import main

main()
