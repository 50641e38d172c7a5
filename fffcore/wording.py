"""Counts in the messages the ``fff`` commands print: "1 chunk", "3 chunks"."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, in the plural (``plural``, or ``noun`` + "s") unless ``number`` is 1."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
