"""A load, orchestrated: the pipeline (bounded asyncio queues, ordered shutdown), landing (count-before-insert
reconcile), the resume ledger, the runner that opens source, sink and ledger in order. Imports stages, sinks and
below; reports progress through the `Reporter` protocol, never to a terminal itself.
"""
