"""Plain-text tables for the tools' console output."""
from typing import Sequence


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """`head` and `rows` (strings) as left-aligned columns separated by ' | ', with a
  rule under the head."""
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  fmt = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))
  return "\n".join([fmt(head), "-+-".join("-" * w for w in widths)] +
                   [fmt(r) for r in rows])
