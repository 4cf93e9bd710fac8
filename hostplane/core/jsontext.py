"""`json.dumps(value, indent=2)`, byte for byte, in a third of the time.

The standard library indents with its pure-Python encoder (its C one cannot indent):
31 ms of `hostplane-agent inventory`'s ~90 on a 922-function server, more than the
sysfs scan. This writes the same text from JSON-ready values (dicts with string keys,
lists or tuples, strings, ints, floats, booleans, None), ASCII-escaped as json does.
"""

import json
from json.encoder import encode_basestring_ascii as _quote


def indented_json(value):
    text = _scalar(value)
    if text is not None:
        return text
    chunks = []
    _container(value, chunks, "\n")
    return "".join(chunks)


def _scalar(item):
    """The JSON text of a scalar, None for a container."""
    kind = type(item)
    if kind is str:
        return _quote(item)
    if item is None:
        return "null"
    if kind is bool:
        return "true" if item else "false"
    if kind is int:
        return int.__repr__(item)
    if kind is float:
        return json.dumps(item)   # rare here; json's own spelling of NaN and infinities
    return None


def _container(value, chunks, newline):
    inner = newline + "  "
    if isinstance(value, dict):
        if not value:
            chunks.append("{}")
            return
        separator = "{" + inner
        for key, item in value.items():
            text = _quote(item) if type(item) is str else _scalar(item)
            if text is None:
                chunks.append(f"{separator}{_quote(key)}: ")
                _container(item, chunks, inner)
            else:
                chunks.append(f"{separator}{_quote(key)}: {text}")
            separator = "," + inner
        chunks.append(newline + "}")
    elif isinstance(value, (list, tuple)):
        if not value:
            chunks.append("[]")
            return
        separator = "[" + inner
        for item in value:
            text = _scalar(item)
            if text is None:
                chunks.append(separator)
                _container(item, chunks, inner)
            else:
                chunks.append(separator + text)
            separator = "," + inner
        chunks.append(newline + "]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON-ready")
