"""Plain-text tables for the command lines of both services (`hostplane`, `check`)."""

import sys


def table_lines(rows, columns, header=True, min_widths=()):
    """Lines of a table; `columns` as (heading, key or function) over dict rows, every
    column as wide as its widest cell (or its `min_widths` entry), trailing spaces cut."""
    cells = [[heading for heading, _ in columns]] if header else []
    for row in rows:
        cells.append([text(get(row) if callable(get) else row.get(get)) for _, get in columns])
    widths = [max([len(line[index]) for line in cells] + list(min_widths[index:index + 1]))
              for index in range(len(columns))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in cells]


def print_table(rows, columns, out=None):
    """The table on `out` (stdout), or "(none)" when there are no rows."""
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    for line in table_lines(rows, columns):
        print(line, file=out)


def text(value):
    if value is None or value == "":
        return "-"
    return str(value)
