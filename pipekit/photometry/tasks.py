"""The work a photometry process does on frames: the tasks `pipekit.photometry.workers`
hands out, run in a worker process or in the step's own.

`FrameWork` holds one process's state (the frames it keeps, the star list) and its tasks:
examine a candidate reference frame, search a band of the reference frame for stars, place
the target, measure a frame. `warm_up` readies a process before workers are forked from it.
"""

import importlib
import os

import numpy as np

from ..errors import FrameError, PipekitError
from .reading import CACHE_BYTES, FrameCache

__all__ = ["FrameWork", "warm_up", "write_band_file", "remove_band_file", "WORKER_IMPORTS",
           "STAR_SEARCH_IMPORTS"]

#: Imported here before forking, so each worker does not import them again: what measuring
#: a frame needs, and (`STAR_SEARCH_IMPORTS`) what choosing the reference frame needs too.
WORKER_IMPORTS = ("astropy.io.fits", "astropy.wcs", "astropy.table", "astropy.time",
                  "scipy.spatial")
STAR_SEARCH_IMPORTS = ("astropy.stats", "photutils.detection")
_warmed = set()


def warm_up(star_search=True):
    """Import what the workers use, once per process: forked workers inherit it instead of
    paying it on every run.

    With ``star_search``, also run the star finder once on a small image (its first call
    imports matplotlib and more); without, only what measuring frames needs (a nightly run
    with the star list on disk).
    """
    for module in WORKER_IMPORTS:
        importlib.import_module(module)
    if not star_search or "star search" in _warmed:
        return
    from .detection import background_map, detect_stars

    for module in STAR_SEARCH_IMPORTS:
        importlib.import_module(module)
    image = np.random.default_rng(0).normal(100.0, 3.0, (96, 96)).astype(np.float32)
    image[40:43, 50:53] += 300.0
    detect_stars(image, 3.0, background=background_map(image, box=32))
    _warmed.add("star search")


class FrameWork:
    """One process's frame work: the frames it keeps, the star list, and the tasks.

    Every task takes the frame's path first; a frame read by ``examine`` or
    ``split_detection`` is kept (within ``budget``) for its ``measure``.

    Parameters
    ----------
    config : pipekit.config.ReductionConfig
    budget : int
        Bytes of pixels to keep (`FrameCache`).
    """

    def __init__(self, config, budget=CACHE_BYTES):
        self.config = config
        self.cache = FrameCache(budget)
        self.stars = None
        self.bright = None
        self._band = None

    def _read(self, path):
        from ..frames import read_frame

        return read_frame(path)

    def examine(self, path):
        """Read a candidate reference frame, keep it, and return its `Candidate`."""
        from .reference import examine_candidate

        frame = self._read(path)
        self.cache.offer(path, frame)  # kept even when rejected: measuring rejects it at once
        cand, bkg = examine_candidate(path, frame, self.config)
        self.cache.offer_background(path, bkg)
        return cand

    def _kept(self, path):
        """``(frame, background)``: kept, else read (and kept when it fits); its background
        map made when it has none yet."""
        from .detection import background_map

        hit = self.cache.get(path)
        frame, bkg = hit if hit else (self._read(path), None)
        if not hit:
            self.cache.offer(path, frame)
        if bkg is None:
            bkg = background_map(frame.data)
            self.cache.offer_background(path, bkg)
        return frame, bkg

    def split_detection(self, path, best, n_bands):
        """Prepare the star search of the reference frame ``path`` in ``n_bands`` bands of
        rows (`detection_bands`): keep the first band for `detect_kept_band`; return the
        others' jobs for `detect_band` in other processes: ``(file of the band's pixels,
        background, fwhm, threshold, peak_max, y0, keep)`` each."""
        from .detection import detection_bands, detection_threshold

        frame, bkg = self._kept(path)
        p = self.config.photometry
        threshold, peak_max = detection_threshold(frame.data, p.detection_sigma,
                                                  saturate=frame.info.saturate, background=bkg)
        jobs = [(frame.data[y0:y1], bkg, best.fwhm, threshold, peak_max, y0, keep)
                for y0, y1, *keep in detection_bands(frame.data.shape, best.fwhm, n_bands)]
        self._band = jobs[0]
        # the other bands go through files in memory (tmpfs): a pipe would copy each band
        # four times on its way through the parent
        return [(write_band_file(band), *rest) for band, *rest in jobs[1:]]

    def detect_kept_band(self, path):
        """`dao_sources` on the band `split_detection` kept."""
        band, self._band = self._band, None
        if band is None:  # this task was moved here from a worker process that died
            raise PipekitError(f"{path}: the star search of the reference frame lost a band "
                               "with a worker process that died; run the step again")
        return self.detect_band(path, *band)

    def detect_band(self, path, band, background, fwhm, threshold, peak_max, y0, keep):
        """`dao_sources` on one band of rows of the reference frame ``path``: its pixels, or
        the file `split_detection` wrote them to (removed once read)."""
        from .detection import band_residual, dao_sources

        if isinstance(band, str):
            name = band
            try:
                band = np.load(name, mmap_mode="r")  # the mapping outlives the name
            finally:
                remove_band_file(name)
        return dao_sources(band_residual(band, y0, background), fwhm, threshold, peak_max,
                           y0=y0, keep=tuple(keep))

    def target_position(self, path, best, cands, estimate=None):
        """The target's position on the reference frame ``path`` (`target_on_reference`)."""
        from .reference import target_on_reference

        frame, bkg = self._kept(path)
        return target_on_reference(frame, bkg, best, cands, self.config, estimate)

    def use_stars(self, stars):
        """Set the star list that ``measure`` places on each frame."""
        from .dataset import bright_rows

        self.stars = stars
        self.bright = bright_rows(stars)

    def measure(self, path):
        """Read (or take from memory) and measure one frame: ``(table, info)``."""
        from .dataset import measure_frame_data

        hit = self.cache.pop(path)
        frame, bkg = hit if hit else (self._read(path), None)
        try:
            return measure_frame_data(frame, path, self.stars, self.config, self.bright, bkg)
        except FrameError as exc:
            # the frame's time, so that listing it as rejected needs no second header read
            exc.mjd_mid = frame.info.mjd_mid
            raise


def write_band_file(band):
    """Write an image band to a temporary ``.npy`` file, in memory where the system has a
    tmpfs (``/dev/shm``; a container's may be small: when it is full, the temporary folder
    on disk); return its name."""
    import tempfile

    band = np.ascontiguousarray(band)
    shm = "/dev/shm"
    folders = ([shm] if os.path.isdir(shm) and os.access(shm, os.W_OK) else []) + [None]
    for folder in folders:
        fd, name = tempfile.mkstemp(prefix="pipekit-band-", suffix=".npy", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, band)
            return name
        except BaseException as exc:
            remove_band_file(name)
            if not isinstance(exc, OSError) or folder is None:
                raise


def remove_band_file(name):
    """Remove a band file of `split_detection` (nothing when it is gone already)."""
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
