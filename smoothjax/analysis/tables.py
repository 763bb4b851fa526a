"""Markdown tables: the one builder every summary table of smoothjax goes through."""

from __future__ import annotations

from collections.abc import Sequence


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
  """A Markdown table: ``left`` left-aligned columns, the others right-aligned (numbers).

  A ``|`` in a cell is escaped, so a run named ``a|b`` keeps its columns.

  Returns:
    The table text, ending in a newline.
  """
  esc = lambda cell: str(cell).replace("|", r"\|")
  align = "|" + "---|" * left + "---:|" * (len(header) - left)
  lines = ["| " + " | ".join(map(esc, header)) + " |", align]
  lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"
