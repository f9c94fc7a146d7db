"""Sort downloaded frames into datasets, configure new datasets, list datasets.

A dataset is one folder ``<reduction_dir>/<target>/<instrument class>/<filter>/`` (``red_dir``)
laid out as the existing microlensing pipeline lays it out: the frames and
``reduction_config.yaml`` side by side at the top, outputs in subfolders. Datasets sorted by
earlier pipekit versions keep their frames in ``red_dir/data/``: `dataset_frames` reads both.
Frames that cannot be placed go to ``<reduction_dir>/_set_aside/<reason>/``; sorting never
loses a frame (a reprocessed frame's old version is kept in ``red_dir/replaced/``).
"""

import filecmp
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .atomic import TMP_PREFIX, fsync_dir, link_or_copy_new, write_text_new
from .config import CONFIG_NAME, write_reduction_config
from .errors import ConfigError, FrameError, describe_os_error
from .frames import CALIBRATION_OBSTYPES, read_frame_info
from .locks import is_locked
from .lco import (distinct_slug, format_dec, format_ra, frame_stem,
                  frame_suffix, list_frames, slug)

__all__ = [
    "SortResult", "safe_name", "dataset_dir", "target_folder", "TARGET_NAME_FILE", "sort_frames", "configure_dataset",
    "list_datasets", "frame_files", "is_dataset_locked",
    "dataset_frames", "frame_folders", "SET_ASIDE_DIR", "CONFIG_NAME", "LEGACY_FRAME_DIR", "REPLACED_DIR",
]

log = logging.getLogger("pipekit.datasets")

#: File in a target's folder naming the target that owns it (see `target_folder`).
TARGET_NAME_FILE = ".target_name"

#: Folder (inside the reduction folder) for frames sort could not place.
SET_ASIDE_DIR = "_set_aside"

#: Where pipekit versions before the seed's layout kept a dataset's frames (``red_dir/data``).
#: Still read, never written.
LEGACY_FRAME_DIR = "data"

#: Where sort keeps the previous version of a reprocessed frame (``red_dir/replaced``).
REPLACED_DIR = "replaced"

# A folder this deep (<target>/<class>/<filter>) holding frames is a dataset even before it
# has a config; shallower ones may hold other frames (a download folder, the seed's catalog).
_DATASET_DEPTH = 3

# The LCO conventions, under the names this module has always exported.
safe_name = slug
frame_files = list_frames


@dataclass
class SortResult:
    """What `sort_frames` did.

    Attributes
    ----------
    sorted : dict
        Dataset folder -> list of frame paths now in it (new frames and replaced ones).
    set_aside : list of (Path, str)
        Frames moved to ``_set_aside/<reason>/``: (new path, reason).
    left_for_later : list of Path
        Frames left in the download folder because their dataset is locked.
    new_datasets : list of Path
        Dataset folders created by this sort.
    dropped_duplicates : list of Path
        Frames already present, byte for byte, at their destination; the
        download copy was removed.
    failed : list of (Path, str)
        Frames that could not be moved (left where they were): (path, reason).
    replaced : list of (Path, Path)
        Reprocessed frames: (the dataset's frame, now the new version; where the old
        version was kept, in ``red_dir/replaced/``).
    """

    sorted: dict = field(default_factory=dict)
    set_aside: list = field(default_factory=list)
    left_for_later: list = field(default_factory=list)
    new_datasets: list = field(default_factory=list)
    dropped_duplicates: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    replaced: list = field(default_factory=list)

    @property
    def n_sorted(self):
        """Number of frames moved into datasets."""
        return sum(len(v) for v in self.sorted.values())

    @property
    def n_set_aside(self):
        """Number of frames set aside."""
        return len(self.set_aside)


def dataset_dir(reduction_dir, info):
    """The dataset folder of a frame: ``<reduction_dir>/<target>/<class>/<filter>``.

    Parameters
    ----------
    reduction_dir : str or os.PathLike
    info : FrameInfo

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FrameError
        Naming the frame and the header keys it lacks.
    """
    missing = [key for key, value in (("OBJECT", info.target),
                                      ("INSTRUME (known class)", info.instrument_class),
                                      ("FILTER", info.filter)) if not value]
    if missing:
        raise FrameError(f"{info.path or info.filename}: cannot place in a dataset, header lacks "
                         f"{', '.join(missing)}")
    return target_folder(reduction_dir, info.target) / info.instrument_class / slug(info.filter)


def target_folder(reduction_dir, target):
    """The folder of target ``target`` in ``reduction_dir``; distinct targets never share one.

    The folder is ``slug(target)`` (`pipekit.lco.slug`), which records the name
    that owns it in ``.target_name``. Another name with the same slug (``T 1``,
    ``T/1``, ``T?1`` all give ``T_1``) gets ``<slug>-<hash of its name>``
    (`pipekit.lco.distinct_slug`): the first one sorted keeps the plain folder. A
    folder from before this rule (no ``.target_name``) is claimed by the first
    target that maps to it.

    Parameters
    ----------
    reduction_dir : str or os.PathLike
    target : str

    Returns
    -------
    pathlib.Path
        The folder (created, with its ``.target_name``, when it is claimed).
    """
    folder = Path(reduction_dir) / slug(target)
    owner = _folder_owner(folder)
    if owner is None:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            write_text_new(folder / TARGET_NAME_FILE, str(target))
            owner = str(target)
        except FileExistsError:  # claimed meanwhile by another sort
            owner = _folder_owner(folder)
    return Path(reduction_dir) / distinct_slug(target, owner)


def _folder_owner(folder):
    try:
        return (folder / TARGET_NAME_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def is_dataset_locked(red_dir):
    """True when ``red_dir`` is locked by a live reduction (see `pipekit.locks`)."""
    return is_locked(red_dir)


def frame_folders(red_dir):
    """The folders a dataset's frame files are in, the top first: ``red_dir`` and its
    ``data/`` (`LEGACY_FRAME_DIR`)."""
    red_dir = Path(red_dir)
    return red_dir, red_dir / LEGACY_FRAME_DIR


def dataset_frames(red_dir, log_layout=False):
    """A dataset's frames: at the top of ``red_dir``, and in ``red_dir/data/`` (older layout).

    Every reader of a dataset's frames asks here (photometry, configure, selection,
    `list_datasets`). ``data/`` is where earlier pipekit versions sorted frames: still read,
    never moved. A frame in both places (same `pipekit.lco.frame_stem`) counts once, from
    the top. Only frame files (`pipekit.lco.list_frames`) are listed: never the config,
    light curves, or anything in other subfolders.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder.
    log_layout : bool
        Log at INFO, once for this call, where the frames were found and which copies
        were used (the photometry driver does, once per reduction).

    Returns
    -------
    list of pathlib.Path
        The top frames, then the ``data/`` frames not also at the top, each sorted.

    Examples
    --------
    >>> [p.name for p in dataset_frames("reduction/OGLE-2024-BLG-0034/sinistro/ip")]  # doctest: +SKIP
    ['lsc1m005-fa15-20240501-0042-e91.fits', ...]
    """
    red_dir = Path(red_dir)
    top = list_frames(red_dir)
    legacy = list_frames(red_dir / LEGACY_FRAME_DIR)
    if not legacy:
        return top
    stems = {frame_stem(f) for f in top}
    kept = [f for f in legacy if frame_stem(f) not in stems]
    if log_layout:
        both = len(legacy) - len(kept)
        log.info("%s: %d frame(s) at the top, %d in %s/ (layout of earlier pipekit versions, "
                 "read as it is)%s", red_dir, len(top), len(kept), LEGACY_FRAME_DIR,
                 f"; {both} frame(s) in both places, the copies at the top used" if both
                 else "")
    return top + kept


# ---- moving without ever losing a frame -------------------------------------------

def _same_bytes(a, b):
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _move(src, dest):
    """Move ``src`` to ``dest`` (which must not exist), across filesystems if need be."""
    # Link (or copy, atomically) first, then drop the source: a crash in between leaves
    # two identical copies, never none; an existing dest is never replaced.
    link_or_copy_new(src, dest)
    try:
        os.unlink(src)
    except FileNotFoundError:  # a concurrent sort saw the identical copy and dropped it
        pass


def _free_name(folder, name):
    """``name`` in ``folder``, or ``name`` with ``.1``, ``.2`` ... before its FITS suffix."""
    suffix = frame_suffix(name) or Path(name).suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    n = 1
    while (folder / f"{stem}.{n}{suffix}").exists():
        n += 1
    return folder / f"{stem}.{n}{suffix}"


def _set_aside(src, reduction_dir, reason, detail, result):
    folder = Path(reduction_dir) / SET_ASIDE_DIR / reason
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / src.name
    if dest.exists():
        if _same_bytes(src, dest):
            src.unlink()
            result.dropped_duplicates.append(src)
            log.info("%s: identical copy already set aside in %s; download copy removed",
                     src.name, folder)
            return
        dest = _free_name(folder, src.name)
    try:
        _move(src, dest)
    except FileNotFoundError:
        if src.exists():
            raise
        log.info("%s: gone before it could be set aside (another sort moved it?)", src)
        return
    result.set_aside.append((dest, reason))
    log.warning("set aside %s -> %s/%s: %s", src.name, SET_ASIDE_DIR, reason, detail)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with open(Path(reduction_dir) / SET_ASIDE_DIR / "set_aside.log", "a",
                  encoding="utf-8") as fh:
            fh.write(f"{stamp}\t{reason}\t{dest.relative_to(reduction_dir)}\t{detail}\n")
    except OSError as exc:
        log.warning("cannot append to set_aside.log: %s", exc)


def _classify(info):
    """(reason, detail) when the frame is not a science frame of a known dataset, else None."""
    if info.obstype != "EXPOSE":
        if info.obstype in CALIBRATION_OBSTYPES:
            return "calibration", f"OBSTYPE {info.obstype}"
        return "not_science", (f"OBSTYPE {info.obstype}" if info.obstype else "OBSTYPE missing")
    if info.instrument_class is None:
        return "unknown_instrument", f"INSTRUME {info.instrument!r} is not a known LCO camera"
    if not info.target or not info.filter:
        lacking = [k for k, v in (("OBJECT", info.target), ("FILTER", info.filter)) if not v]
        return "incomplete_header", f"header lacks {', '.join(lacking)}"
    return None


def sort_frames(download_dir, reduction_dir, frame_paths=None):
    """Move downloaded frames into their datasets.

    Science frames (``OBSTYPE`` EXPOSE) go to the top of their dataset folder, beside its
    ``reduction_config.yaml`` (the existing microlensing pipeline's layout).
    Calibration frames, other non-science frames, unknown instruments, frames
    lacking OBJECT/FILTER and unreadable files go to
    ``<reduction_dir>/_set_aside/<reason>/`` (``calibration``, ``not_science``,
    ``unknown_instrument``, ``incomplete_header``, ``unreadable``,
    ``duplicate``), each logged with its reason. Frames of a locked dataset
    stay in the download folder for the next run.

    A frame already in its dataset (at the top, or in ``data/`` for a dataset sorted by
    an earlier pipekit) with identical bytes is dropped from the download folder. One with
    the same name but different bytes is a reprocessed version (LCO file names are unique,
    and downloads verify md5): it replaces the dataset's copy atomically, the old version is
    kept in ``<dataset>/replaced/`` (``name.1.fits.fz``... when that name is taken), and the
    frame's photometry is marked stale (`pipekit.photometry.invalidate_frame`) so the next
    reduction measures it again. No frame's bytes are ever lost.

    Parameters
    ----------
    download_dir : str or os.PathLike
        Folder of new frames.
    reduction_dir : str or os.PathLike
        The datasets' root.
    frame_paths : list of path, optional
        Sort only these; default every FITS file directly in ``download_dir``.

    Returns
    -------
    SortResult

    Raises
    ------
    FileNotFoundError
        When ``download_dir`` does not exist.

    Examples
    --------
    >>> result = sort_frames("downloads", "reduction")  # doctest: +SKIP
    >>> result.n_sorted, [str(p) for p in result.new_datasets]  # doctest: +SKIP
    (42, ['reduction/OGLE-2024-BLG-0034/sinistro/ip'])
    """
    download_dir = Path(download_dir)
    reduction_dir = Path(reduction_dir)
    if frame_paths is None:
        if not download_dir.is_dir():
            raise FileNotFoundError(f"{download_dir}: download folder does not exist")
        frame_paths = list_frames(download_dir)
    reduction_dir.mkdir(parents=True, exist_ok=True)
    result = SortResult()
    locked = {}
    for src in map(Path, frame_paths):
        try:
            _sort_one(src, reduction_dir, result, locked)
        except Exception as exc:  # one bad frame never stops the sort
            reason = (describe_os_error(exc) if isinstance(exc, OSError)
                      else f"{type(exc).__name__}: {exc}")
            log.error("%s: could not be sorted, left in place (%s)", src, reason)
            result.failed.append((src, reason))
    log.info("sorted %d frame(s) into %d dataset(s) (%d new); %d set aside; %d left for "
             "later (locked); %d failed", result.n_sorted, len(result.sorted),
             len(result.new_datasets), result.n_set_aside, len(result.left_for_later),
             len(result.failed))
    return result


def _sort_one(src, reduction_dir, result, locked):
    if not src.exists():
        log.info("%s: gone before it could be sorted (another sort moved it?)", src)
        return
    try:
        info = read_frame_info(src)
    except FrameError as exc:
        if not src.exists():
            log.info("%s: gone while being read (another sort moved it?)", src)
            return
        _set_aside(src, reduction_dir, "unreadable", str(exc), result)
        return
    problem = _classify(info)
    if problem:
        _set_aside(src, reduction_dir, *problem, result)
        return
    red_dir = dataset_dir(reduction_dir, info)
    if red_dir not in locked:
        locked[red_dir] = is_dataset_locked(red_dir)
    if locked[red_dir]:
        result.left_for_later.append(src)
        log.info("%s: dataset %s is locked; frame left for the next run", src.name, red_dir)
        return
    existing = next((p for p in (folder / src.name for folder in frame_folders(red_dir))
                     if p.exists()), None)
    if existing is not None:
        if _same_bytes(src, existing):
            src.unlink()
            result.dropped_duplicates.append(src)
            log.info("%s: already in %s with identical bytes; download copy removed",
                     src.name, existing.parent)
            return
        if not src.exists():  # another sort moved it in meanwhile: nothing differs
            log.info("%s: gone before it could be compared (another sort moved it?)", src)
            return
        _replace_frame(src, existing, red_dir, result)
        return
    if not red_dir.is_dir():
        if red_dir not in result.new_datasets:
            result.new_datasets.append(red_dir)
            log.info("new dataset %s", red_dir)
        red_dir.mkdir(parents=True, exist_ok=True)
    dest = red_dir / src.name
    try:
        _move(src, dest)
    except FileExistsError:  # appeared between the check and the move
        _set_aside(src, reduction_dir, "duplicate", f"{dest} appeared during the move", result)
        return
    except FileNotFoundError:
        if not src.exists():  # another sort took it meanwhile
            log.info("%s: gone before it could be moved (another sort moved it?)", src)
            return
        raise
    result.sorted.setdefault(red_dir, []).append(dest)
    log.debug("%s -> %s", src.name, red_dir)


def _replace_frame(src, existing, red_dir, result):
    """Put the reprocessed ``src`` in place of ``existing``, keeping the old bytes."""
    from .photometry.dataset import invalidate_frame

    keep_dir = red_dir / REPLACED_DIR
    keep_dir.mkdir(exist_ok=True)
    kept = keep_dir / src.name
    kept = _free_name(keep_dir, src.name) if kept.exists() else kept
    # Order matters for a crash at any instant: the old bytes are kept first, the stale
    # photometry removed before the new bytes arrive (else a rerun would see identical
    # bytes and never re-measure), and the swap is one rename.
    link_or_copy_new(existing, kept)
    invalidate_frame(red_dir, existing.name)
    staged = existing.parent / f"{TMP_PREFIX}{src.name}.{os.getpid()}"
    staged.unlink(missing_ok=True)
    try:
        link_or_copy_new(src, staged)
    except FileNotFoundError:
        if src.exists():
            raise
        log.info("%s: gone before it could replace %s (another sort took it?)", src, existing)
        return
    os.replace(staged, existing)
    fsync_dir(existing.parent)
    src.unlink(missing_ok=True)
    result.replaced.append((existing, kept))
    result.sorted.setdefault(red_dir, []).append(existing)
    log.info("%s: reprocessed frame replaced in %s (same name, new bytes); previous version "
             "kept as %s; its photometry will be measured again", src.name, existing.parent,
             kept.relative_to(red_dir))


# ---- configuring and listing datasets ---------------------------------------------

def configure_dataset(red_dir, template=None):
    """Write a new dataset's ``reduction_config.yaml`` from its frames' headers.

    The target's name is the frames' ``OBJECT``; its position is the catalogue
    position ``CAT-RA``/``CAT-DEC`` (stable across dithers), else ``RA``/``DEC``.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder (its frames listed by `dataset_frames`).
    template : str or os.PathLike, optional
        Template config; default ``pipekit/templates/reduction_config.yaml``.

    Returns
    -------
    pathlib.Path or None
        The new config, or None when one already exists (never overwritten)
        or no frame gives a target name and position (logged).

    Examples
    --------
    >>> configure_dataset("reduction/OGLE-2024-BLG-0034/sinistro/ip")  # doctest: +SKIP
    PosixPath('reduction/OGLE-2024-BLG-0034/sinistro/ip/reduction_config.yaml')
    """
    red_dir = Path(red_dir)
    config_path = red_dir / CONFIG_NAME
    if config_path.exists():
        log.debug("%s exists; left as it is", config_path)
        return None
    for frame in dataset_frames(red_dir):
        try:
            info = read_frame_info(frame)
        except FrameError as exc:
            log.warning("%s", exc)
            continue
        if info.target and info.cat_ra is not None and info.cat_dec is not None:
            break
    else:
        log.warning("%s: no readable frame with OBJECT and RA/DEC among its frames; "
                    "not configured", red_dir)
        return None
    try:
        return write_reduction_config(config_path, info.target,
                                      format_ra(info.cat_ra), format_dec(info.cat_dec),
                                      template=template)
    except ConfigError as exc:
        if config_path.exists():  # another process wrote it first
            log.debug("%s", exc)
            return None
        raise


def list_datasets(reduction_dir):
    """Dataset folders under ``reduction_dir``.

    A dataset folder holds ``reduction_config.yaml`` or a ``data/`` folder (earlier pipekit
    versions), at any depth; or, at ``<target>/<class>/<filter>`` depth, frames
    (`dataset_frames`; the seed's ``<target>/<class>/star_catalog.fits`` makes no dataset).
    ``_set_aside``, hidden folders and a dataset's own subfolders are not searched.

    Parameters
    ----------
    reduction_dir : str or os.PathLike

    Returns
    -------
    list of pathlib.Path
        Sorted.
    """
    reduction_dir = Path(reduction_dir)
    found = []
    for root, dirs, files in os.walk(reduction_dir):
        here = Path(root)
        depth = len(here.relative_to(reduction_dir).parts)
        if depth and (CONFIG_NAME in files or LEGACY_FRAME_DIR in dirs or (
                depth == _DATASET_DEPTH and dataset_frames(here))):
            found.append(here)
            dirs[:] = []  # a dataset's own folders are not datasets
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
    return sorted(found)
