"""Select the datasets a reduction manager runs: all, by date, recent, or from a file.

Selection reads only what is cheap: the instrument class folder, LCO file names
(``DAY-OBS``, camera) and, when a name does not follow the LCO pattern, the header's
``DATE-OBS``.
"""

import logging
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from .datasets import dataset_frames, list_datasets
from .errors import ConfigError, FrameError
from .frames import read_frame_info
from .lco import LCO_FILENAME_RE, frame_stem

__all__ = ["select_datasets", "frame_day"]

log = logging.getLogger("pipekit.datasets")

def frame_day(path):
    """The observing day of a frame: DAY-OBS from an LCO file name, else the header's DATE-OBS.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    datetime.date or None
        None when neither gives a date (unreadable frame).
    """
    match = LCO_FILENAME_RE.match(frame_stem(path))
    if match:
        try:
            return datetime.strptime(match.group("day"), "%Y%m%d").date()
        except ValueError:
            pass
    try:
        info = read_frame_info(path)
    except FrameError:
        return None
    return date.fromisoformat(info.date_obs[:10]) if info.date_obs else None


def _uses_instrument(red_dir, wanted):
    if red_dir.parent.name.lower() in wanted:       # <target>/<class>/<filter>
        return True
    for frame in dataset_frames(red_dir):
        match = LCO_FILENAME_RE.match(frame_stem(frame))
        if match and match.group("instrument").lower() in wanted:
            return True
    return False


def _has_frame_between(red_dir, first, last):
    for frame in dataset_frames(red_dir):
        day = frame_day(frame)
        if day is not None and first <= day and (last is None or day <= last):
            return True
    return False


def select_datasets(reduction_dir, selection=None, instrument_list=None, now=None):
    """The datasets a reduction manager should run.

    Parameters
    ----------
    reduction_dir : str or os.PathLike
        The datasets' root.
    selection : pipekit.config.DatasetSelection, optional
        ``group``: ``"all"`` (default); ``"date"``: datasets with a frame observed
        from ``start_date`` to ``end_date`` inclusive (``end_date`` None: up to
        now); ``"recent"``: a frame observed in the last ``ndays`` days;
        ``"file"``: the dataset folders listed in ``file``, one a line (absolute, or
        relative to ``reduction_dir``; blank lines and ``#`` comments skipped), in
        that order. Days are observing days (DAY-OBS of LCO file names).
    instrument_list : list of str, optional
        Keep datasets of these instrument classes (``sinistro``, ...) or cameras
        (``fa15``, ...); empty or None keeps all.
    now : datetime, optional
        "Now" in UTC for ``recent`` and an open ``date`` range.

    Returns
    -------
    list of pathlib.Path
        Locked datasets are included: skipping them is the caller's choice.

    Raises
    ------
    ConfigError
        When ``group`` is ``file`` and the file cannot be read.
    """
    reduction_dir = Path(reduction_dir)
    now = now or datetime.now(timezone.utc)
    group = getattr(selection, "group", "all") or "all"
    if group == "file":
        listing = Path(selection.file)
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{listing}: cannot read the dataset list "
                              f"(dataset_selection.file): {exc}") from exc
        known = set(list_datasets(reduction_dir))
        chosen = []
        for line in lines:
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            red_dir = Path(os.path.normpath(reduction_dir / entry))
            if red_dir in known and red_dir not in chosen:
                chosen.append(red_dir)
            elif red_dir not in known:
                log.warning("%s: %s is not a dataset under %s; skipped", listing, entry,
                            reduction_dir)
        if not chosen:
            log.warning("%s: the dataset list selects no dataset under %s", listing,
                        reduction_dir)
    else:
        chosen = list_datasets(reduction_dir)
        if group == "date":
            first = selection.start_date.date()
            last = selection.end_date.date() if selection.end_date else now.date()
            chosen = [d for d in chosen if _has_frame_between(d, first, last)]
        elif group == "recent":
            first = (now - timedelta(days=float(selection.ndays))).date()
            chosen = [d for d in chosen if _has_frame_between(d, first, None)]
        elif group != "all":
            raise ConfigError(f"dataset_selection.group = {group!r}: expected one of "
                              "all, date, recent, file")
    if instrument_list:
        wanted = {name.lower() for name in instrument_list}
        chosen = [d for d in chosen if _uses_instrument(d, wanted)]
    log.info("selected %d dataset(s) under %s (group %s)", len(chosen), reduction_dir, group)
    return chosen
