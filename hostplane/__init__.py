"""Code shared by the hostplane agent and controller.

`hostplane.core` is pure (no I/O, no Flask, libvirt, pyroute2 or SQLAlchemy); the
other modules here are the web plumbing both services use, written once.
"""

__version__ = "0.1.0"
