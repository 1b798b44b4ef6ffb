"""Schema revisions, oldest first: v0001 creates the tables, v0002 adds failure details."""
