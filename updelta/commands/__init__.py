"""Subcommands that live in their own modules; each exposes `register(app)` (called from `updelta/cli.py`)."""
