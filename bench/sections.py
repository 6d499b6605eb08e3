"""The sections of ``bench/RESULTS.md`` that benchmarks other than ``python -m bench`` write.

Each begins with a marker line ``<!-- bench.<name> -->`` and runs to the next marker or the end;
``python -m bench`` rewrites what comes before the first marker and keeps the rest.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PREFIX", "RESULTS", "kept_sections", "write_section"]

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PREFIX = "<!-- bench."


def write_section(marker: str, lines: list[str], results: Path = RESULTS) -> None:
    """Replace the section that ``marker`` begins (or add it at the end), keeping the others."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if marker in text:
        head, rest = text.split(marker, 1)
        following = rest.find("\n" + PREFIX)
        tail = rest[following:] if following >= 0 else ""
    else:
        head, tail = text, ""
    body = "\n".join(lines).rstrip() + "\n"
    results.write_text(head.rstrip() + "\n\n" + marker + "\n" + body + tail)


def kept_sections(results: Path = RESULTS) -> str:
    """Every marked section of RESULTS.md, from the first marker on ("" when there is none)."""
    text = results.read_text() if results.exists() else ""
    at = text.find(PREFIX)
    return "" if at < 0 else "\n" + text[at:]
