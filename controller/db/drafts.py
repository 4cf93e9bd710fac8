"""Rows changed by the core's state machines and written without the ORM's unit of work.

The state machines (hostplane.core.device_states, vm_states) change any object's
attributes in place. A claim, the hottest write there is, hands them a `Draft` of a
plain row instead of an ORM object and writes back exactly what they set, in one
prebuilt statement: the ORM's loads and flushes were about a fifth of a create's CPU.
Nothing here bumps a host's revision: a writer that bypasses the ORM does it itself
(models.bump_revisions, or models.bumped after a statement of its own that bumps).
"""

import threading

from sqlalchemy import and_, bindparam, insert, update


class Draft:
    """A row's values as attributes; `changes()` is what was set since, new attributes
    included."""

    def __init__(self, values):
        self.__dict__.update(values)
        self._original = dict(values)

    def changes(self):
        return {name: value for name, value in vars(self).items()
                if name != "_original" and (name not in self._original
                                            or self._original[name] != value)}


def update_rows(session, table, drafts, keys):
    """Write what each of `drafts` changed to its row of `table`, found by the columns
    `keys` (their values as the draft had them first); drafts changed alike go in one
    round trip. Returns how many rows matched: keys beyond the primary key make each
    write conditional on the row being still as the draft found it."""
    shapes = {}
    for draft in drafts:
        changes = draft.changes()
        if changes:
            values = {f"key_{name}": draft._original[name] for name in keys}
            values.update((f"new_{name}", value) for name, value in changes.items())
            shapes.setdefault(tuple(sorted(changes)), []).append(values)
    matched = 0
    for columns, rows in shapes.items():
        matched += session.connection().execute(
            _statement("update", table, tuple(keys), columns), rows).rowcount
    return matched


def insert_row(session, table, draft):
    """INSERT `draft`'s values (the table's defaults fill the rest)."""
    values = {name: value for name, value in vars(draft).items() if name != "_original"}
    session.connection().execute(_statement("insert", table), values)


_statements = {}
_statements_lock = threading.Lock()


def _statement(verb, table, keys=(), columns=()):
    """Built once per shape: SQLAlchemy then finds its compiled form without walking a
    new statement each time."""
    shape = (verb, table.name, keys, columns)
    found = _statements.get(shape)
    if found is None:
        if verb == "insert":
            found = insert(table)
        else:
            found = (update(table)
                     .where(and_(*(table.c[name] == bindparam(f"key_{name}") for name in keys)))
                     .values({name: bindparam(f"new_{name}") for name in columns}))
        with _statements_lock:
            found = _statements.setdefault(shape, found)
    return found
