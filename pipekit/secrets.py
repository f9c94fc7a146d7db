"""Secrets scrubbed by value, in one place: what pipekit writes or says never holds one.

The clients register the environment variables holding their secrets; `scrub` reads
them at call time and blanks out each value, its URL-encoded form, the base64 of an
HTTP Basic ``user:password``, and any fragment of 8 or more characters of these.
Every pipekit error message, log record and recorded step outcome passes through it.
"""

import base64
import logging
import os
import re
import threading
import urllib.parse

__all__ = ["MASK", "FRAGMENT", "register_envvar", "secret_values", "scrub", "scrub_value",
           "ScrubFilter", "install_log_scrubbing"]

#: What a secret (or a piece of one) is replaced with.
MASK = "***"
#: Shortest piece of a secret that is blanked out on its own.
FRAGMENT = 8
#: Shortest value of a registered variable taken as a secret (shorter ones would
#: blank out ordinary words).
_MIN_REGISTERED = 4
#: Environment variables that hold a secret by their name, registered or not.
_SECRET_NAME_RE = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY)", re.I)

_lock = threading.Lock()
_envvars = set()
_basic = set()


def register_envvar(name, username=None):
    """Remember that the environment variable ``name`` holds a secret.

    Parameters
    ----------
    name : str or None
        The variable's name; None or empty is ignored.
    username : str, optional
        For a password sent with HTTP Basic: the user name, so that the base64
        of ``username:password`` (what the ``Authorization`` header carries) is
        scrubbed too.

    Examples
    --------
    >>> register_envvar("PIPEKIT_DOCTEST_TOKEN")
    >>> os.environ["PIPEKIT_DOCTEST_TOKEN"] = "s3cr3t-value-42"
    >>> scrub("refused token s3cr3t-value-42 and its piece cr3t-val")
    'refused token *** and its piece ***'
    >>> del os.environ["PIPEKIT_DOCTEST_TOKEN"]
    """
    if not name:
        return
    with _lock:
        _envvars.add(str(name))
        if username:
            _basic.add((str(username), str(name)))


def secret_values():
    """Every secret value known now, longest first.

    The values of the registered variables (4 characters or more) and of any
    variable whose name says it holds a secret (``*TOKEN*``, ``*PASSWORD*``,
    ``*SECRET*``, ``*API_KEY*``; 8 characters or more), each also URL-encoded,
    and the base64 of every registered ``username:password``.

    Returns
    -------
    list of str
    """
    env = os.environ
    with _lock:
        names, basic = set(_envvars), set(_basic)
    values = set()
    for name in names:
        value = env.get(name, "")
        for form in (value, value.strip()):
            if len(form) >= _MIN_REGISTERED:
                values.add(form)
    for name, value in env.items():
        if _SECRET_NAME_RE.search(name) and len(value.strip()) >= FRAGMENT:
            values.update((value, value.strip()))
    for username, name in basic:
        password = env.get(name, "")
        if password:
            values.add(base64.b64encode(f"{username}:{password}".encode()).decode("ascii"))
    values.update({urllib.parse.quote(v, safe="") for v in values})
    return sorted(values, key=len, reverse=True)


def _covered(text, secrets):
    """Sorted, merged ``(start, end)`` spans of ``text`` holding a secret or a piece."""
    spans = []
    for secret in secrets:
        pieces = ([secret] if len(secret) < FRAGMENT else
                  {secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)})
        for piece in pieces:
            start = text.find(piece)
            while start >= 0:
                spans.append((start, start + len(piece)))
                start = text.find(piece, start + 1)
    spans.sort()
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def scrub(text, secrets=None):
    """``text`` with every secret, and every 8+ character piece of one, replaced by ``***``.

    Parameters
    ----------
    text : str
    secrets : iterable of str, optional
        The values to hide; by default `secret_values` (read now).

    Returns
    -------
    str
        ``text`` itself when it holds no secret.

    Examples
    --------
    >>> scrub("Authorization: Token abcdef0123456789", ["abcdef0123456789"])
    'Authorization: Token ***'
    >>> scrub("echo: ef012345", ["abcdef0123456789"])
    'echo: ***'
    """
    if not isinstance(text, str) or not text:
        return text
    secrets = secret_values() if secrets is None else [s for s in secrets if s]
    if not secrets:
        return text
    spans = _covered(text, secrets)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], MASK]
        last = end
    out.append(text[last:])
    return "".join(out)


def scrub_value(value, secrets=None):
    """``value`` with `scrub` applied to every string inside dicts, lists and tuples.

    Parameters
    ----------
    value : object
        Other objects are returned as they are.
    secrets : iterable of str, optional
        As for `scrub`.

    Returns
    -------
    object
        ``value`` itself when nothing in it holds a secret, else a scrubbed copy.

    Examples
    --------
    >>> scrub_value({"message": "bad token abcdef0123456789", "n": 3}, ["abcdef0123456789"])
    {'message': 'bad token ***', 'n': 3}
    """
    secrets = secret_values() if secrets is None else list(secrets)
    if not secrets:
        return value
    return _scrub_value(value, secrets, 0)


def _scrub_value(value, secrets, depth):
    if isinstance(value, str):
        return scrub(value, secrets)
    if depth > 50:
        return value
    if type(value) is dict:
        pairs = [(_scrub_value(k, secrets, depth + 1), _scrub_value(v, secrets, depth + 1))
                 for k, v in value.items()]
        changed = any(nk is not k or nv is not v
                      for (k, v), (nk, nv) in zip(value.items(), pairs))
        return dict(pairs) if changed else value
    if type(value) in (list, tuple):
        items = [_scrub_value(v, secrets, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items)
    return value


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs a record's message, arguments and traceback.

    The message is formatted with its arguments, scrubbed and stored back
    (``args`` emptied); a traceback is formatted into ``exc_text`` and
    scrubbed. It never drops a record.

    Examples
    --------
    >>> record = logging.LogRecord("pipekit", logging.ERROR, __file__, 1,
    ...                            "refused %s", ("abcdef0123456789",), None)
    >>> ScrubFilter(secrets=["abcdef0123456789"]).filter(record), record.getMessage()
    (True, 'refused ***')
    """

    def __init__(self, name="", secrets=None):
        super().__init__(name)
        self._secrets = secrets

    def filter(self, record):
        secrets = secret_values() if self._secrets is None else list(self._secrets)
        if not secrets or getattr(record, "_pipekit_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format is logging's to report
            return True
        record.msg, record.args = scrub(message, secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, secrets)
        record._pipekit_scrubbed = True
        return True


_installed = False


def install_log_scrubbing():
    """Scrub every log record of the ``pipekit`` loggers as it is made.

    A filter on the ``pipekit`` logger alone would miss its children
    (``pipekit.archive`` ...), and a handler's filter only the handlers pipekit
    made; so the record factory is wrapped, for records named ``pipekit`` or
    ``pipekit.*``, whatever handler (file, terminal, a test's) writes them.
    Calling it again does nothing.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()
    scrubber = ScrubFilter()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if record.name == "pipekit" or record.name.startswith("pipekit."):
            scrubber.filter(record)
        return record

    logging.setLogRecordFactory(factory)
