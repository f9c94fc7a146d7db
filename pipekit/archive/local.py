"""A folder of frames already on disk, behind the same interface as the LCO archive client.

:class:`LocalArchive` reads the frames' headers into :class:`ArchiveRecord` s and
copies a frame into the download folder through :class:`pipekit.atomic.AtomicFile`.
"""

import logging
import urllib.parse
import urllib.request
from pathlib import Path

from .. import lco
from ..atomic import AtomicFile
from ..errors import ArchiveError
from ..http import describe_error
from .records import CHUNK_SIZE, ArchiveRecord, frame_fields, read_header, safe_destination

__all__ = ["LocalArchive"]

log = logging.getLogger("pipekit.archive")


def _in_window(observation_date, start, end):
    when = lco.parse_utc(observation_date)
    if when is None:
        return start is None and end is None
    if start is not None and when < start:
        return False
    return end is None or when <= end


class LocalArchive:
    """Frames already on disk, behind the same interface as :class:`LCOArchive`.

    ``query`` reads the FITS headers (``DATE-OBS``, ``PROPID``, ``RLEVEL``)
    of the frames in ``folder`` (every :data:`pipekit.lco.FRAME_SUFFIXES`:
    ``.fits.fz``, ``.fits.gz``, ``.fits``, ``.fit``, ``.fts``, in any case); ``download`` copies
    a frame atomically, checking the md5 when the record has one.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder holding the frames.
    recursive : bool
        Also look in sub-folders.
    name : str, optional
        A label for logs.

    Examples
    --------
    >>> archive = LocalArchive("/data/lco/incoming")                # doctest: +SKIP
    >>> records = archive.query(start="2024-05-01", end="2024-05-02")  # doctest: +SKIP
    """

    def __init__(self, folder, recursive=False, name=None):
        self.folder = Path(folder).expanduser()
        self.recursive = bool(recursive)
        self.name = name or str(self.folder)

    def __repr__(self):
        return f"LocalArchive({str(self.folder)!r}, recursive={self.recursive})"

    def query(self, proposal_id=None, start=None, end=None, reduction_level=None, limit=None,
              **filters):
        """The frames of the folder observed in ``[start, end]`` (UTC).

        Parameters
        ----------
        proposal_id : str, optional
            Keep frames whose ``PROPID`` matches.
        start, end : str or datetime, optional
            Window on ``DATE-OBS``; naive datetimes are UTC.
        reduction_level : int, optional
            Keep frames whose ``RLEVEL`` matches.
        limit : ignored
            Accepted for interface compatibility.
        **filters
            Exact matches on other record fields (``site_id``, ``filter`` ...).

        Returns
        -------
        list of ArchiveRecord
            Sorted by observation date. A file whose header cannot be read
            is skipped with a warning.

        Raises
        ------
        ArchiveError
            The folder does not exist.
        """
        if not self.folder.is_dir():
            raise ArchiveError(f"local archive folder {str(self.folder)!r} does not exist")
        t0 = lco.parse_utc(start)
        t1 = lco.parse_utc(end)
        if start is not None and t0 is None or end is not None and t1 is None:
            raise ArchiveError(f"local archive query: start {start!r} / end {end!r} are not "
                               "ISO dates ('YYYY-MM-DD HH:MM')")
        records = []
        for path in lco.list_frames(self.folder, recursive=self.recursive):
            try:
                header = read_header(path)
            except Exception as exc:  # one unreadable file must not hide the others
                log.warning("local archive: cannot read the header of %s (%s); skipped",
                            path, describe_error(exc))
                continue
            fields = frame_fields(path, header)
            if proposal_id is not None and fields["proposal_id"] != proposal_id:
                continue
            if reduction_level is not None and fields["reduction_level"] != int(reduction_level):
                continue
            if not _in_window(fields["observation_date"], t0, t1):
                continue
            fields["id"] = str(path.relative_to(self.folder))
            fields["url"] = path.resolve().as_uri()
            record = ArchiveRecord.from_api(fields)
            if any(getattr(record, k, None) != v for k, v in filters.items()):
                continue
            records.append(record)
        records.sort(key=lambda r: (r.observation_date or "", r.filename))
        log.info("local archive %s: proposal %s, %s to %s: %d frames", self.name, proposal_id,
                 start, end, len(records))
        return records

    def download(self, record, folder, overwrite=False):
        """Copy one frame into ``folder`` atomically (md5-checked when known).

        Parameters
        ----------
        record : ArchiveRecord
            A record from :meth:`query`.
        folder : str or os.PathLike
        overwrite : bool

        Returns
        -------
        pathlib.Path

        Raises
        ------
        ArchiveError
            Unsafe file name, missing source, or md5 mismatch.
        """
        fetched = self.fetch(record, folder, overwrite=overwrite)
        return fetched.commit() if isinstance(fetched, AtomicFile) else fetched

    def fetch(self, record, folder, overwrite=False):
        """Copy one frame into a temporary file of ``folder``, without committing it.

        The first half of :meth:`download` (see :meth:`LCOArchive.fetch
        <pipekit.archive.LCOArchive.fetch>`).

        Returns
        -------
        pipekit.atomic.AtomicFile or pathlib.Path
            The verified, closed temporary file: commit or discard it. A path
            when the frame is already in place.

        Raises
        ------
        ArchiveError
            As :meth:`download`.
        """
        folder = Path(folder)
        final = safe_destination(folder, record.filename)
        source = self._source(record)
        if final.exists() and final.resolve() == source.resolve():
            return final
        if not overwrite and final.is_file():
            return final
        folder.mkdir(parents=True, exist_ok=True)
        out = None
        try:
            out = AtomicFile(final, digest="md5")
            with open(source, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK_SIZE), b""):
                    out.write(chunk)
            out.close()
        except OSError as exc:
            if out is not None:
                out.discard()
            raise ArchiveError(f"cannot copy {str(source)!r} to {str(final)!r}: {exc}") from exc
        if record.md5 and out.hexdigest != record.md5.lower():
            out.discard()
            raise ArchiveError(f"copy of {str(source)!r}: md5 mismatch, expected {record.md5}, "
                               f"got {out.hexdigest}")
        return out

    def _source(self, record):
        if record.url and record.url.startswith("file:"):
            path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(record.url).path))
        else:
            path = self.folder / str(record.id or record.filename)
        if not path.is_file():
            raise ArchiveError(f"local archive: frame {record.filename!r} not found at "
                               f"{str(path)!r}")
        return path
