"""Alembic migrations of the agentos schema (``agentos db upgrade``; see ``backends/schema.py``).

``env.py`` runs them on the connection ``schema.py`` hands over (an async engine's connection,
through ``run_sync``); ``versions/`` holds one revision per schema change, oldest first.
"""
