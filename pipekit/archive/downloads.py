"""Many frames at once: the concurrent download driver and the frame list.

:func:`download_frames` fetches frames from any archive client
(:class:`~pipekit.archive.LCOArchive`, :class:`~pipekit.archive.LocalArchive`)
with a small thread pool and records each one in a
:class:`FrameList` as it lands, so a rerun fetches only what is missing.
"""

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import os
import sys
import threading
import time
from pathlib import Path

from ..atomic import AtomicFile, remove_stale_temporaries
from ..errors import ArchiveError
from ..http import describe_error
from .records import md5_file, safe_destination

__all__ = ["FrameList", "FrameListEntry", "DownloadResult", "download_frames"]

# The logger name of pipekit.downloads before it moved into the package: log filters
# and pipeline.log lines read the same.
log = logging.getLogger("pipekit.downloads")

#: Temporary files of killed downloads older than this (seconds) are removed
#: by :func:`download_frames`; younger ones may belong to a live process.
STALE_TMP_SECONDS = 3600.0


# --------------------------------------------------------------------------
# The frame list
# --------------------------------------------------------------------------

@dataclasses.dataclass
class FrameListEntry:
    """One line of the frame list: a frame that has landed."""

    filename: str
    id: str = None
    md5: str = None
    time: str = None


class FrameList:
    """The record of frames already downloaded (``frame_list`` in ``data_download.yaml``).

    A text file, one frame per line: ``filename<TAB>id<TAB>md5<TAB>time``
    (a file holding only file names, one per line, is read too). Each frame
    is appended with one ``write`` and an ``fsync`` as it lands; a last line
    cut short by a kill is ignored, and repaired before the next append.

    Parameters
    ----------
    path : str or os.PathLike
        The list's file; its folder is created on the first append.

    Examples
    --------
    >>> frames = FrameList("logs/frame_list.txt")         # doctest: +SKIP
    >>> frames.add("f-e91.fits.fz", id=42, md5="...")      # doctest: +SKIP
    >>> "f-e91.fits.fz" in frames                          # doctest: +SKIP
    True
    """

    HEADER = "# pipekit frame list: filename\tid\tmd5\ttime (UTC)\n"
    #: Appended to a line cut short by a kill, so that it stays ignored.
    CUT_MARK = "# cut short by a kill: ignored"

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries = {}
        self._ids = set()
        self._checked_tail = False
        self.reload()

    def __repr__(self):
        return f"FrameList({str(self.path)!r}, {len(self)} frames)"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def reload(self):
        """Read the file again (another process may have added frames)."""
        entries, ids = {}, set()
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")
        # The last element is '' when the file ends with a newline; otherwise
        # it is a line cut short by a kill, and is not trusted.
        for line in lines[:-1]:
            line = line.strip()
            if not line or line.startswith("#") or line.endswith(self.CUT_MARK):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            parts += [None] * (4 - len(parts))
            entry = FrameListEntry(*[p or None for p in parts[:4]])
            entries[entry.filename] = entry
            if entry.id:
                ids.add(entry.id)
        self._entries, self._ids = entries, ids
        self._checked_tail = False
        return self

    def __len__(self):
        return len(self._entries)

    def __iter__(self):
        return iter(list(self._entries.values()))

    def __contains__(self, filename):
        return filename in self._entries

    def has(self, record):
        """True if ``record`` (by file name, with or without ``.fz``, or id) is listed."""
        name = record.filename
        other = name[:-3] if name.endswith(".fz") else name + ".fz"
        return (name in self._entries or other in self._entries
                or (record.id is not None and str(record.id) in self._ids))

    def entry_for(self, record):
        """The listed entry of ``record`` under its own file name (by name, then id), or None.

        Used to compare md5s: an entry under another name (the frame listed
        uncompressed, without ``.fz``) has another md5 and is not returned.
        """
        entry = self._entries.get(record.filename)
        if entry is None and record.id is not None and str(record.id) in self._ids:
            entry = next((e for e in self._entries.values()
                          if e.id == str(record.id) and e.filename == record.filename), None)
        return entry

    def add(self, filename, id=None, md5=None, time=None):
        """Append one frame (durably: one write, then fsync).

        Parameters
        ----------
        filename : str
        id, md5 : optional
        time : str, optional
            ISO time; default now (UTC).
        """
        if time is None:
            time = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        fields = [filename, "" if id is None else str(id), md5 or "", time]
        if any(("\t" in f or "\n" in f) for f in fields):
            raise ArchiveError(f"frame list {str(self.path)!r}: refusing a field with a tab "
                               f"or newline in {fields!r}")
        line = "\t".join(fields) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                prefix = ""
                if not self._checked_tail:
                    prefix = self._tail_repair(fd)
                    self._checked_tail = True
                os.write(fd, (prefix + line).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            entry = FrameListEntry(*[f or None for f in fields])
            self._entries[filename] = entry
            if entry.id:
                self._ids.add(entry.id)

    def _tail_repair(self, fd):
        size = os.fstat(fd).st_size
        if size == 0:
            return self.HEADER
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            last = fh.read(1)
        # A line cut short by a kill is ended with a mark, so it stays ignored.
        return "" if last == b"\n" else "\t" + self.CUT_MARK + "\n"


# --------------------------------------------------------------------------
# Many frames at once
# --------------------------------------------------------------------------

@dataclasses.dataclass
class DownloadResult:
    """What :func:`download_frames` did.

    Attributes
    ----------
    n_found : int
        Distinct frames asked for.
    n_downloaded, n_skipped, n_failed : int
        Fetched now; already listed or present; failed after retries.
    downloaded : list of str
        File names fetched now (reprocessed ones included).
    reprocessed : list of str
        File names fetched again because the archive's newest version has
        another md5 than the one recorded: a new version of the frame has
        replaced the old one in the download folder, under the same name.
    failures : list of (str, str)
        File name and reason for each failure.
    refused : list of (str, str)
        The failures that are the record's own fault (a file name that would
        leave the folder): retrying cannot help. Also in ``failures``.
    n_bytes : int
        Bytes written.
    seconds : float
        Wall time.
    """

    n_found: int = 0
    n_downloaded: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    downloaded: list = dataclasses.field(default_factory=list)
    reprocessed: list = dataclasses.field(default_factory=list)
    failures: list = dataclasses.field(default_factory=list)
    refused: list = dataclasses.field(default_factory=list)
    n_bytes: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self):
        """Throughput in MB/s (10**6 bytes)."""
        return self.n_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def _show_progress(progress):
    if not progress:
        return False
    try:
        return sys.stderr.isatty() or "ipykernel" in sys.modules
    except (AttributeError, ValueError):
        return False


def _present(folder, filename):
    """The file already in ``folder`` for this frame, with or without ``.fz``."""
    folder = Path(folder)
    names = [filename]
    if filename.endswith(".fz"):
        names.append(filename[:-3])
    else:
        names.append(filename + ".fz")
    for name in names:
        path = folder / name
        if path.is_file():
            return path
    return None


def _known_md5(record, folder, frame_list):
    """How a frame is already known: (how, comparable md5, path, md5 of the file) or None.

    ``how`` is "listed" (in the frame list) or "present" (in the folder, unlisted). The
    comparable md5 is None when it cannot be set against the archive's: an entry of the
    older names-only list, or the frame kept under another name (uncompressed).
    """
    if frame_list is not None and frame_list.has(record):
        entry = frame_list.entry_for(record)
        return "listed", entry.md5 if entry is not None else None, None, None
    present = _present(folder, record.filename)
    if present is None:
        return None
    md5 = md5_file(present)
    return "present", md5 if present.name == record.filename else None, present, md5


def _remove_stale_temps(folder):
    for path in remove_stale_temporaries(folder, STALE_TMP_SECONDS):
        log.info("removed %s, left by a download that was killed", path)


def download_frames(archive, records, folder, frame_list=None, max_workers=4, progress=True,
                    overwrite=False):
    """Download frames concurrently, skipping those already listed or present.

    Each frame lands atomically (see :meth:`LCOArchive.download
    <pipekit.archive.LCOArchive.download>`) and is then
    appended to ``frame_list``, so a killed run loses at most the frames in
    flight. A frame that fails after its retries is logged and counted; the
    others go on.

    Parameters
    ----------
    archive : LCOArchive or LocalArchive
        Or any client with ``download(record, folder, overwrite=False)``; its
        ``fetch`` (same arguments, returning an uncommitted
        :class:`~pipekit.atomic.AtomicFile` or the path already in place) is
        used when it has one.
    records : iterable of ArchiveRecord
    folder : str or os.PathLike
        Download folder; created if missing.
    frame_list : FrameList or path, optional
        Frames already downloaded; updated as frames land.
    max_workers : int
        Concurrent downloads (a small bounded thread pool).
    progress : bool
        Show a tqdm bar (only on a terminal or in Jupyter).
    overwrite : bool
        Fetch even frames listed or present.

    Returns
    -------
    DownloadResult

    Examples
    --------
    >>> archive = LCOArchive(token_envvar="LCO_ARCHIVE_TOKEN")          # doctest: +SKIP
    >>> records = archive.query("KEY2024A-001", "2024-05-01", "2024-05-02")  # doctest: +SKIP
    >>> result = download_frames(archive, records, "downloads", "logs/frame_list.txt")
    ... # doctest: +SKIP
    >>> result.n_downloaded, result.n_skipped, result.n_failed       # doctest: +SKIP
    (42, 0, 0)
    """
    t_start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if frame_list is not None and not isinstance(frame_list, FrameList):
        frame_list = FrameList(frame_list)
    if frame_list is not None:
        frame_list.reload()
    _remove_stale_temps(folder)

    result = DownloadResult()
    todo, names, reprocessed = [], set(), set()
    for record in records:
        if record.filename in names:
            continue
        names.add(record.filename)
        result.n_found += 1
        try:
            safe_destination(folder, record.filename)
        except ArchiveError as exc:  # the record itself is bad: no retry can fix it
            log.error("%s", exc)
            result.failures.append((str(record.filename), str(exc)))
            result.refused.append((str(record.filename), str(exc)))
            continue
        if not overwrite:
            known = _known_md5(record, folder, frame_list)
            if known is not None and record.md5 and known[1] and known[1] != record.md5:
                # Reprocessed: same id and name, a new md5 in version_set. Fetch it again.
                log.info("frame %s was reprocessed (md5 %s, was %s): downloading it again",
                         record.filename, record.md5, known[1])
                reprocessed.add(record.filename)
            elif known is not None:
                result.n_skipped += 1
                if known[0] == "present" and frame_list is not None:
                    # Landed but not listed (killed between rename and append): list it now.
                    frame_list.add(known[2].name, id=record.id, md5=known[3])
                continue
        todo.append(record)

    # Workers stream and verify into temporary files (AtomicFile); this thread makes
    # each one durable, renames it and lists it, while the workers stream the next frames.
    # A client without ``fetch`` downloads whole frames in the workers.
    fetch = getattr(archive, "fetch", None) or archive.download

    from tqdm.auto import tqdm

    workers = max(1, min(int(max_workers), len(todo) or 1))
    with tqdm(total=len(todo), desc=f"download {getattr(archive, 'name', '')}".strip(),
              unit="frame", disable=not _show_progress(progress), leave=False) as bar:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                     thread_name_prefix="pipekit-download")
        futures = {}
        try:
            futures = {pool.submit(fetch, rec, folder,
                                   overwrite=overwrite or rec.filename in reprocessed): rec
                       for rec in todo}
            for future in concurrent.futures.as_completed(futures):
                record = futures.pop(future)
                try:
                    fetched = future.result()
                    if isinstance(fetched, AtomicFile):
                        md5 = fetched.hexdigest or record.md5
                        path = fetched.commit()
                    else:  # already in place
                        md5, path = record.md5, fetched
                except Exception as exc:  # one bad frame is dropped, the rest go on
                    message = str(exc) if isinstance(exc, ArchiveError) else describe_error(exc)
                    log.error("frame %s not downloaded: %s", record.filename, message)
                    result.failures.append((record.filename, message))
                else:
                    if frame_list is not None:
                        frame_list.add(path.name, id=record.id, md5=md5)
                    result.downloaded.append(path.name)
                    if record.filename in reprocessed:
                        result.reprocessed.append(path.name)
                    try:
                        result.n_bytes += path.stat().st_size
                    except OSError:
                        pass
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for future in futures:  # interrupted: verified but never committed
                if future.done() and not future.cancelled() and future.exception() is None:
                    fetched = future.result()
                    if isinstance(fetched, AtomicFile):
                        fetched.discard()

    result.n_downloaded = len(result.downloaded)
    result.n_failed = len(result.failures)
    result.seconds = time.perf_counter() - t_start
    log.info("%s: %d frames found, %d downloaded (%.1f MB, %.1f MB/s), %d skipped, %d failed",
             getattr(archive, "name", archive), result.n_found, result.n_downloaded,
             result.n_bytes / 1e6, result.mb_per_s, result.n_skipped, result.n_failed)
    return result
