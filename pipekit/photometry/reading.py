"""Frames kept in memory between the reference choice and the measuring pass.

`FrameCache` keeps the frames the reference-frame choice has already read (with their
background maps), within a memory budget, so the measuring pass does not read them again.
Each process measuring frames (`pipekit.photometry.workers`) has its own.
"""

from pathlib import Path

__all__ = ["FrameCache", "CACHE_BYTES"]

#: Pixels the reference-frame choice may keep for the measuring pass (bytes, per process
#: when one or two measure; 640 MB shared by more).
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
