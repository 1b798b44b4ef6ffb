"""Alembic's environment and revisions for the store's schema (run them with `parley.store.migrator`)."""
