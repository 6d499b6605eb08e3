"""The code of another commit of this repository, to measure against in the same run.

A benchmark that compares this tree with "today's" code exports that commit with ``git archive``
into a temporary directory and starts its own bench server from there (``PYTHONPATH`` and the
working directory set to the exported tree), side by side with this tree's.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

__all__ = ["ROOT", "export"]

ROOT = Path(__file__).resolve().parent.parent


def export(rev: str, dest: Path) -> Path:
    """The tree of commit ``rev`` of this repository, under ``dest``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True
    ).stdout
    tree = dest / f"agentos-{rev}"
    tree.mkdir()
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(tree, filter="data")
    return tree
