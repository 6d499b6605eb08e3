"""The public API is what agentos/__init__.py exports, sorted and complete."""

from __future__ import annotations

import agentos


def test_all_is_sorted_and_exported() -> None:
    names = [n for n in agentos.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in agentos.__all__:
        assert hasattr(agentos, name), name


def test_public_classes_are_exported() -> None:
    public = {
        name
        for name, value in vars(agentos).items()
        if isinstance(value, type) and not name.startswith("_")
    }
    assert public <= set(agentos.__all__)
