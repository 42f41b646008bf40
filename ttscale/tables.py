"""Fitting a ``rich`` table to the width it is printed in, without cutting a value short.

A table wider than the console is split by columns into several tables, each repeating the
first (key) column, so that an 80-column terminal or a log file (rich's 80 columns when not a
terminal) shows every number whole instead of "0.7…". :func:`pack_columns` is the pure packing
rule; :func:`fit_table` applies it to a built table.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["fit_table", "pack_columns", "print_table", "table_width"]

# A column's share of a boxed table's width beyond its text: one space of padding each side and
# its right-hand rule; the table's left edge adds one more.
_COLUMN_FRAME = 3
_TABLE_EDGE = 1


def table_width(widths: Sequence[int]) -> int:
    """The printed width of a boxed table whose columns' texts are ``widths`` wide."""
    return _TABLE_EDGE + sum(width + _COLUMN_FRAME for width in widths)


def pack_columns(widths: Sequence[int], width: int) -> list[list[int]]:
    """Groups of column indices, in order, each starting with the key column 0, such that each
    group's table fits ``width`` when it can; a column too wide even beside the key alone gets a
    group of its own (its cells then fold, never truncate)."""
    if not widths:
        return []
    groups: list[list[int]] = []
    current = [0]
    for index in range(1, len(widths)):
        trial = [*current, index]
        if len(current) > 1 and table_width([widths[i] for i in trial]) > width:
            groups.append(current)
            current = [0, index]
        else:
            current = trial
    groups.append(current)
    return groups


def _text_width(value: object) -> int:
    return max((cell_len(line) for line in str(value).splitlines()), default=0)


def fit_table(table: Table, width: int) -> list[Table]:
    """``table`` as tables that fit ``width`` (one when it does). Title and caption stay on the
    first and last; every column folds rather than truncates, so no value loses characters."""
    columns = table.columns
    widths = [_text_width(column.header) for column in columns]
    for position, column in enumerate(columns):
        for cell in column.cells:
            widths[position] = max(widths[position], _text_width(cell))
    groups = pack_columns(widths, width)
    parts: list[Table] = []
    for number, group in enumerate(groups):
        part = Table(
            title=table.title if number == 0 else None,
            caption=table.caption if number == len(groups) - 1 else None,
            show_header=table.show_header,
        )
        for index in group:
            source = columns[index]
            part.add_column(source.header, justify=source.justify, overflow="fold")
        cells = [list(columns[index].cells) for index in group]
        for row in zip(*cells, strict=True):
            part.add_row(*row)
        parts.append(part)
    return parts


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` fitted to ``console``'s width: its title and caption as lines of their own
    (wrapped between words at the console's width, not squeezed into the table's), then its
    columns in as many tables as they need."""
    title, caption = table.title, table.caption
    table.title = table.caption = None
    if title is not None:
        console.print(Text(str(title)) if isinstance(title, str) else title)
    for part in fit_table(table, console.width):
        console.print(part)
    if caption is not None:
        console.print(Text(str(caption)) if isinstance(caption, str) else caption)
