"""Progress of the long commands (``fff compare``, ``fff apply``), drawn by tqdm.

- On a terminal: one bar redrawn in place, fitted to the terminal's width (followed as it is
  resized), with the time spent, an estimate of the time left and what is running now.
- In a Jupyter notebook: tqdm's widget.
- Anywhere else (a log, a pipe, CI): a plain line at the start, then at most one every
  :data:`LOG_INTERVAL_S` seconds, and one at the end, so that a log neither fills with redraws nor
  goes quiet for minutes.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any, TextIO

#: Seconds between two lines of progress written to a log.
LOG_INTERVAL_S = 10.0
#: Columns the bar's fixed parts take on a terminal (percentage, bar, counts, times); what a terminal
#: has beyond them shows the label of the work running now.
FIXED_COLUMNS = 64


class Progress:
    """A progress display, called as ``progress(done, total, label)`` as work advances.

    Args:
        stream: where it is drawn (``sys.stderr`` for the commands).
        unit: what is counted, for the rate (``"step"``, ``"chunk"``).
        description: what runs, shown before the bar.
    """

    def __init__(self, stream: TextIO, unit: str, description: str) -> None:
        self.stream = stream
        self.unit = unit
        self.description = description
        self.interactive = _is_terminal(stream)
        self.bar: Any = None  # drawn at the first call, which knows the total

    def _start(self, total: int) -> Any:
        from tqdm import tqdm

        common: dict[str, Any] = {"total": total, "unit": self.unit, "desc": self.description, "leave": True}
        if self.interactive:
            return tqdm(
                file=self.stream,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} {elapsed}<{remaining}{postfix}",
                **common,
            )
        if "ipykernel" in sys.modules:  # a notebook's cell output: tqdm.auto draws a widget there
            from tqdm.auto import tqdm as notebook_tqdm

            return notebook_tqdm(**common)
        return tqdm(
            file=_Lines(self.stream),
            mininterval=LOG_INTERVAL_S,
            # A fixed step of one keeps tqdm's monitor thread from redrawing a bar it thinks stalled,
            # which printed a second line right after the interval's own.
            miniters=1,
            bar_format="{desc}: {percentage:3.0f}% {n}/{total} {unit}s, {elapsed} spent, {remaining} left{postfix}",
            **common,
        )

    def __call__(self, done: int, total: int, label: str = "") -> None:
        if self.bar is None:
            self.bar = self._start(total)
        if self.bar.total != total:
            self.bar.total = total
        if label:
            self.bar.set_postfix_str(self._fitted(label), refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Draw the final state and stop (also done once ``done`` reaches ``total``); closing twice is harmless."""
        if self.bar is not None:
            self.bar.close()

    def _fitted(self, label: str) -> str:
        """``label``, its end kept (the most specific part of a case id), within the terminal's spare width."""
        if not self.interactive:
            return label
        room = max(12, shutil.get_terminal_size().columns - FIXED_COLUMNS - len(self.bar.desc))
        return label if len(label) <= room else "..." + label[-(room - 3) :]


class _Lines:
    """A file for tqdm that writes each redraw as a line of its own (tqdm redraws with a carriage return)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal behind it
        return False
