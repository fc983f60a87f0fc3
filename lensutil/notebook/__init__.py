"""Notebook helpers: the set-up cell's checks and badges, and the HookExplorer widget."""
