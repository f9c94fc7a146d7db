"""Archive clients and downloads: the LCO science archive over HTTP, a local folder of frames.

Both clients speak one interface, ``query`` (the frames of a proposal in a date
window, as :class:`ArchiveRecord` s) and ``download`` (one frame, md5-checked,
written atomically); :func:`download_frames` fetches many at once and records them
in a :class:`FrameList`.

Modules: :mod:`~pipekit.archive.records` (records, header fields, md5, safe names),
:mod:`~pipekit.archive.lco_archive` (:class:`LCOArchive`),
:mod:`~pipekit.archive.local` (:class:`LocalArchive`),
:mod:`~pipekit.archive.from_config` (:func:`archive_from_config`),
:mod:`~pipekit.archive.downloads` (:func:`download_frames`, :class:`FrameList`),
:mod:`~pipekit.archive.paging` (windows the archive counts exactly) and
:mod:`~pipekit.archive.window` (each run's window, from where the last one ended).
"""

from .downloads import DownloadResult, FrameList, FrameListEntry, download_frames
from .from_config import archive_from_config
from .lco_archive import DEFAULT_URL, LCOArchive
from .local import LocalArchive
from .records import (ArchiveRecord, frame_fields, md5_file, read_header, record_int,
                      safe_destination)
from .window import (QueryState, proposal_window, query_state_path, query_window,
                     record_successes)

__all__ = [
    "ArchiveRecord",
    "LCOArchive",
    "LocalArchive",
    "archive_from_config",
    "safe_destination",
    "DEFAULT_URL",
    "FrameList",
    "FrameListEntry",
    "DownloadResult",
    "download_frames",
    "md5_file",
    "read_header",
    "frame_fields",
    "record_int",
    "QueryState",
    "query_state_path",
    "query_window",
    "proposal_window",
    "record_successes",
]
