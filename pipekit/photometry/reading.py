"""Reading frames for the measuring pass: each read once, the next one read ahead.

`FrameCache` keeps the frames the reference-frame choice has already read (with their
background maps), within a memory budget, so the measuring pass does not read them again.
`read_ahead` yields frames in order while a background thread reads and decompresses the
next one: astropy's tile decompression and the float conversion release the GIL for much
of their time, so reading overlaps the measuring of the frame before.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["FrameCache", "read_ahead", "CACHE_BYTES"]

log = logging.getLogger("pipekit.photometry")

#: Pixels the reference-frame choice may keep for the measuring pass (bytes).
CACHE_BYTES = 320 * 2 ** 20


class FrameCache:
    """Frames already read, kept for one later use within ``budget`` bytes of pixels.

    Parameters
    ----------
    budget : int
        Largest total size of the kept images (bytes); a frame that does not fit is not kept.
    """

    def __init__(self, budget=CACHE_BYTES):
        self.budget = int(budget)
        self.used = 0
        self._frames = {}

    def offer(self, path, frame):
        """Keep ``frame`` (read from ``path``) when it fits in the budget."""
        key = Path(path)
        if key in self._frames:
            return True
        size = frame.data.nbytes
        if self.used + size > self.budget:
            return False
        self._frames[key] = [frame, None]
        self.used += size
        return True

    def offer_background(self, path, background):
        """Keep the background map computed for a kept frame."""
        entry = self._frames.get(Path(path))
        if entry is not None:
            entry[1] = background

    def get(self, path):
        """``(frame, background or None)`` of a kept frame, else None (the frame is kept)."""
        entry = self._frames.get(Path(path))
        return tuple(entry) if entry else None

    def pop(self, path):
        """Like `get`, and forget the frame (its memory is freed once the caller drops it)."""
        entry = self._frames.pop(Path(path), None)
        if entry is None:
            return None
        self.used -= entry[0].data.nbytes
        return tuple(entry)

    def __contains__(self, path):
        return Path(path) in self._frames

    def clear(self):
        self._frames.clear()
        self.used = 0


def _read(path):
    from ..frames import read_frame_unsilenced

    try:
        return read_frame_unsilenced(path), None
    except Exception as exc:  # noqa: BLE001 - handed to the caller, who reports it per frame
        return None, exc


def read_ahead(paths, cache=None):
    """Yield ``(path, frame, background, error)`` for ``paths`` in order, reading one ahead.

    Frames in ``cache`` come from it (with their background maps); the others are read
    by one background thread while the caller works on the frame before. ``error`` is the
    exception `pipekit.frames.read_frame` raised (``frame`` is then None). Use it in a
    ``with contextlib.closing(read_ahead(...))`` block: astropy's header-quirk warnings
    stay silenced until the generator is closed.

    Parameters
    ----------
    paths : list of Path
    cache : FrameCache, optional
    """
    from ..frames import _astropy_quirk_warnings_silenced

    paths = list(paths)
    # The thread reads without touching the warnings filters (``catch_warnings`` is not
    # thread-safe); this generator, in the caller's thread, holds the filters that
    # `pipekit.frames.read_frame` would set, for the whole reading. Close it (or run it
    # to its end) before leaving the caller's own warnings contexts.
    with _astropy_quirk_warnings_silenced(), \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipekit-read") as pool:
        pending = {}

        def submit(i):
            if i < len(paths) and not (cache is not None and paths[i] in cache):
                pending[i] = pool.submit(_read, paths[i])

        submit(0)
        for i, path in enumerate(paths):
            submit(i + 1)
            hit = cache.pop(path) if cache is not None else None
            if hit is not None:
                frame, bkg = hit
                yield path, frame, bkg, None
                continue
            frame, exc = pending.pop(i).result()
            yield path, frame, None, exc
