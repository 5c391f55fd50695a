"""The durable transcript journal: SQLite, its service off the event loop, formats."""
