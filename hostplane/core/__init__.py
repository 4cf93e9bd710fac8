"""Pure domain logic: device records, identities, state machine, scheduler.

Nothing in this package performs I/O; adapters feed it data and act on its answers.
"""
