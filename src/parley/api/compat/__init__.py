"""Adapters for the wire shapes of the systems Parley replaces: one module per system."""
