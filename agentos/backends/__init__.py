"""Backends: the :class:`Store` and :class:`Notifier` contracts (``base``) and one module per
database, chosen by the database URL's scheme (:func:`open_backend`)."""

from agentos.backends.base import Backend, Notifier, Store, open_backend, register_backend

__all__ = ["Backend", "Notifier", "Store", "open_backend", "register_backend"]
