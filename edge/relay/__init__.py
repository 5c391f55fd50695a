"""Store and forward: the sender pushing the journal upstream, the ingest receiving it."""
