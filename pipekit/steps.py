"""The science and service functions wrapped as pipeline steps.

Each step takes plain arguments (paths, names), calls the plain functions of the modules it
adapts and returns a small status dict: ``{"status": "success" | "error", <counts>, <output
paths>}``. One adapter, `pipeline_step` (BANZAI's ``Stage.run`` is the model), owns what every
step shares: isolating expected failures into a status dict, logging the outcome under the
step's name. Big data goes to files; the dict stays small so checkpoints stay cheap.
"""

import functools
import inspect
import logging
from collections import Counter
from pathlib import Path

from .archive import (FrameList, LocalArchive, QueryState, archive_from_config, download_frames,
                      proposal_window, query_state_path, record_successes)
from .config import CONFIG_NAME, load_download_config, load_reduction_config, load_tom_config
from .datasets import configure_dataset, list_datasets, sort_frames
from .errors import ArchiveError, ConfigError, PipekitError
from .lightcurve import build_lightcurve, lightcurve_paths, write_lightcurve
from .photometry import REJECTED_FRAMES, measure_dataset
from .tom import TOMClient
from .worker import old_objects_out_of_gc

__all__ = ["pipeline_step", "reduction_config", "download", "sort", "configure", "photometry",
           "lightcurve", "upload", "MAX_LISTED_FAILURES"]

log = logging.getLogger("pipekit.steps")


#: Failures listed in full in a download status; beyond this only counted.
MAX_LISTED_FAILURES = 20


def pipeline_step(isolate=(PipekitError,), on_error=None):
    """Decorator: turn a plain function returning a status dict into a pipeline step.

    The function does the work and returns ``{"status": ..., ...}``; the adapter
    does what every step shares. An exception of a type in ``isolate`` (a bad
    config, an unreadable dataset) becomes ``{"status": "error", "error": str(exc),
    "red_dir": ...}`` plus ``on_error``, logged at ERROR under the step's name; other
    exceptions propagate, so the pipeline's ``retries`` and ``ignore_exceptions``
    apply (network failures). The outcome is logged once: the counts (``n_*`` keys)
    at INFO, or the returned ``error`` at ERROR.

    Parameters
    ----------
    isolate : tuple of type
        Exceptions that end the step with status ``"error"`` instead of raising.
    on_error : dict, optional
        Keys added to the error status (zero counts, empty lists), so that every
        outcome of a step has the keys its callers read.

    Returns
    -------
    callable
        The decorator. The step keeps the function's name, signature and
        docstring, and pickles by reference like the function.

    Examples
    --------
    >>> @pipeline_step(on_error={"n_done": 0})  # doctest: +SKIP
    ... def count(red_dir):
    ...     return {"status": "success", "n_done": len(list(Path(red_dir).iterdir()))}
    """
    def decorate(func):
        return _Step(func, tuple(isolate), dict(on_error or {}))
    return decorate


class _Step:
    """A step made by `pipeline_step`: callable like its function, pickled by name.

    A class, not a closure: dill, pickling a user's function that calls a step,
    follows closures into everything they reach (the whole pipekit, recursively); an
    instance that pickles as "the attribute ``name`` of module ``pipekit.steps``" stops
    that walk, and a checkpoint stays small.
    """

    def __init__(self, func, isolate, on_error):
        functools.update_wrapper(self, func)
        self.__signature__ = inspect.signature(func)  # the engine reads it for `pipeline`
        del self.__wrapped__
        self._func, self._isolate, self._on_error = func, isolate, on_error

    def __call__(self, *args, **kwargs):
        where = self.__signature__.bind_partial(*args, **kwargs).arguments.get("red_dir")
        label = f"{self.__name__} {where}" if where is not None else self.__name__
        try:
            result = self._func(*args, **kwargs)
        except self._isolate as exc:
            log.error("%s: %s", label, exc)
            result = {"status": "error", "error": str(exc), **self._on_error}
            if where is not None:
                result["red_dir"] = str(where)
            return result
        if isinstance(result, dict):
            counts = ", ".join(f"{key[2:]} {value}" for key, value in result.items()
                               if key.startswith("n_"))
            failed = result.get("status") == "error"
            note = result.get("error") if failed else result.get("reason")
            log.log(logging.ERROR if failed else logging.INFO, "%s: %s%s%s", label,
                    result.get("status"), f" ({counts})" if counts else "",
                    f": {note}" if note else "")
        return result

    def __reduce__(self):
        return _step_named, (self.__module__, self.__qualname__)

    def __repr__(self):
        return f"<pipeline step {self.__module__}.{self.__qualname__}>"


def _step_named(module, qualname):
    import importlib
    return getattr(importlib.import_module(module), qualname)


def reduction_config(red_dir, pipeline=None):
    """The dataset's `~pipekit.config.ReductionConfig`, read once per run.

    A `~pipekit.workflows.DatasetPipeline` loads ``reduction_config.yaml`` at the
    start of every run (a resumed one too, so edits take effect) and its steps share
    that one validated config; a step called on its own reads the file.

    Parameters
    ----------
    red_dir : str or os.PathLike
    pipeline : Pipeline, optional
        The running pipeline, as the step engine passes it.

    Returns
    -------
    ReductionConfig
    """
    config = getattr(pipeline, "config", None)
    if config is not None and Path(pipeline.red_dir).resolve() == Path(red_dir).resolve():
        return config
    return load_reduction_config(Path(red_dir) / CONFIG_NAME)


@pipeline_step(isolate=())
def download(config_path, max_workers=4, progress=False, now=None):
    """Download the new frames of every active archive and proposal.

    Reads ``data_download.yaml``: every active archive, every proposal in
    it, over ``start_datetime``..``end_datetime``; with ``start_datetime: none``
    from the end of that proposal's last fully successful query minus an hour
    (``first_run_lookback_days`` before the end on the first run), kept in
    ``<frame_list>.state.json`` (`pipekit.archive.window`).
    Records are collected across proposals, then fetched concurrently into
    ``data_download_dir``; frames already in ``frame_list`` or already in
    the folder (with or without ``.fz``) are skipped.

    Parameters
    ----------
    config_path : str or os.PathLike
        The ``data_download.yaml``.
    max_workers : int
        Concurrent downloads per archive.
    progress : bool
        Show a progress bar (on a terminal or in Jupyter).
    now : datetime, optional
        "Now" for the default window (tests, replays).

    Returns
    -------
    dict
        ``status`` (``"error"`` if any query or frame failed: a resumed run
        fetches only what is missing), ``n_found``, ``n_downloaded``,
        ``n_skipped``, ``n_failed``, ``failures`` (up to
        ``MAX_LISTED_FAILURES`` ``[name, reason]`` pairs), ``n_refused`` and
        ``refused`` (records refused for good, e.g. a file name that would
        leave the folder: logged, but no reason to fail), ``reprocessed`` (frames
        fetched again for a new version: same name, new md5), ``download_dir``,
        ``frame_list``, ``start``, ``end``, ``n_bytes``, ``seconds``.
    """
    config = load_download_config(config_path)
    state = QueryState(query_state_path(config.frame_list))
    windows = [config.window(now)]
    folder = config.data_download_dir
    frame_list = FrameList(config.frame_list)
    totals = {"n_found": 0, "n_downloaded": 0, "n_skipped": 0, "n_failed": 0,
              "n_bytes": 0, "seconds": 0.0}
    failures, refused, reprocessed = [], [], []
    for archive_config in config.archives.values():
        if not archive_config.active:
            log.info("archive %s is not active: skipped", archive_config.name)
            continue
        archive = archive_from_config(archive_config)
        proposals = list(archive_config.proposals)
        if not proposals:
            if not isinstance(archive, LocalArchive):
                log.warning("archive %s lists no proposals: nothing to query",
                            archive_config.name)
                continue
            proposals = [None]
        records, queried = [], {}
        for proposal in proposals:
            start, end = proposal_window(config, state, archive_config.name, proposal, now)
            windows.append((start, end))
            try:
                found = archive.query(proposal, start, end,
                                      reduction_level=archive_config.reduction_level_image)
            except ArchiveError as exc:  # one proposal failing stops no other
                log.error("archive %s, proposal %s: %s", archive_config.name, proposal, exc)
                failures.append([f"{archive_config.name}:{proposal}", str(exc)])
                totals["n_failed"] += 1
                continue
            records.extend(found)
            queried[proposal] = (end, found)
        result = download_frames(archive, records, folder, frame_list,
                                 max_workers=max_workers, progress=progress)
        record_successes(state, archive_config.name, queried, result)
        reprocessed.extend(result.reprocessed)
        for key in ("n_found", "n_downloaded", "n_skipped", "n_bytes", "seconds"):
            totals[key] += getattr(result, key)
        for_good = set(result.refused)
        failures.extend([name, reason] for name, reason in result.failures
                        if (name, reason) not in for_good)
        refused.extend([name, reason] for name, reason in result.refused)
        totals["n_failed"] += result.n_failed - len(result.refused)
    # Refused records (unsafe file names) fail every retry alike: they are reported,
    # not allowed to hold back sorting the frames that did arrive.
    status = "error" if failures else "success"
    start, end = min(w[0] for w in windows[1:] or windows), max(w[1] for w in windows)
    return {"status": status, **totals, "failures": failures[:MAX_LISTED_FAILURES],
            "n_refused": len(refused), "refused": refused[:MAX_LISTED_FAILURES],
            "n_reprocessed": len(reprocessed), "reprocessed": reprocessed[:MAX_LISTED_FAILURES],
            "download_dir": str(folder), "frame_list": str(config.frame_list),
            "start": start.isoformat(), "end": end.isoformat()}


@pipeline_step(isolate=(FileNotFoundError,), on_error={"n_sorted": 0, "n_set_aside": 0})
def sort(download_dir, reduction_dir):
    """Step: move downloaded frames into their datasets (`pipekit.datasets.sort_frames`).

    Parameters
    ----------
    download_dir, reduction_dir : str or os.PathLike

    Returns
    -------
    dict
        ``status``, ``n_sorted``, ``n_set_aside``, ``n_left_for_later``,
        ``n_duplicates_dropped``, ``n_failed``, ``datasets`` (folders that
        received frames), ``new_datasets``, ``set_aside`` (``{reason: count}``),
        ``failed`` (``[[path, reason]]``), ``n_replaced`` and ``replaced``
        (reprocessed frames put in place of their old version: ``[[frame, kept old copy]]``).
        Every frame is tried (one bad frame never stops the others), but a frame that
        could not be placed — moved nor set aside, e.g. on a full disk — makes the status
        ``"error"``, with ``error`` counting them and naming the first one's path and
        cause; a resumed run sorts them again. A missing download folder fails the step.
    """
    result = sort_frames(download_dir, reduction_dir)
    n_tried = (result.n_sorted + result.n_set_aside + len(result.left_for_later)
               + len(result.dropped_duplicates) + len(result.failed))
    extra = {}
    if result.failed:
        path, reason = result.failed[0]
        extra["error"] = (f"could not place {len(result.failed)} of {n_tried} frames (left in "
                          f"{download_dir}); first: {path}: {reason}")
    return {
        "status": "error" if result.failed else "success",
        **extra,
        "n_sorted": result.n_sorted,
        "n_set_aside": result.n_set_aside,
        "n_left_for_later": len(result.left_for_later),
        "n_duplicates_dropped": len(result.dropped_duplicates),
        "n_failed": len(result.failed),
        "datasets": [str(p) for p in result.sorted],
        "new_datasets": [str(p) for p in result.new_datasets],
        "set_aside": dict(Counter(reason for _, reason in result.set_aside)),
        "failed": [[str(p), reason] for p, reason in result.failed[:MAX_LISTED_FAILURES]],
        "n_replaced": len(result.replaced),
        "replaced": [[str(p), str(kept)] for p, kept in result.replaced],
    }


@pipeline_step(on_error={"n_configured": 0, "configs": []})
def configure(reduction_dir, template=None):
    """Step: write ``reduction_config.yaml`` for every dataset that lacks one.

    Existing configs are never touched (`pipekit.datasets.configure_dataset`).

    Parameters
    ----------
    reduction_dir : str or os.PathLike
    template : str or os.PathLike, optional
        Template config (``default_red_config`` of ``data_download.yaml``);
        default pipekit's own.

    Returns
    -------
    dict
        ``status``, ``n_configured``, ``configs`` (new config paths),
        ``n_existing``, ``n_unconfigured`` and ``unconfigured`` (dataset
        folders no frame could configure, or whose config failed, with why).
    """
    if template is not None and not Path(template).is_file():
        raise ConfigError(f"{template}: reduction config template not found")
    configs, unconfigured, n_existing = [], [], 0
    for red_dir in list_datasets(reduction_dir):
        if (Path(red_dir) / CONFIG_NAME).exists():
            n_existing += 1
            continue
        try:
            path = configure_dataset(red_dir, template=template)
        except PipekitError as exc:
            log.error("configure %s: %s", red_dir, exc)
            unconfigured.append([str(red_dir), str(exc)])
            continue
        if path is None:
            if (Path(red_dir) / CONFIG_NAME).exists():
                n_existing += 1
            else:
                unconfigured.append([str(red_dir), "no readable frame with OBJECT and RA/DEC"])
        else:
            configs.append(str(path))
    return {"status": "success", "n_configured": len(configs), "configs": configs,
            "n_existing": n_existing, "n_unconfigured": len(unconfigured),
            "unconfigured": unconfigured}


_MAX_LISTED = 50  # rejected frames listed in a step result; the full list is on disk


def _first(mapping, n=_MAX_LISTED):
    return dict(list(sorted(mapping.items()))[:n])


@pipeline_step()
def photometry(red_dir, pipeline=None):
    """Step: measure every frame of a dataset not yet measured (`pipekit.photometry`).

    Uses the dataset's config (`reduction_config`); per-frame results go to
    ``<red_dir>/photometry/``, so a resumed run measures only the frames left.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder.
    pipeline : Pipeline, optional
        The running pipeline (passed by the step engine): its config, loaded once per run.

    Returns
    -------
    dict
        ``status``, ``n_frames``, ``n_measured`` (this run), ``n_skipped`` (already done),
        ``n_rejected``, ``n_rejected_unchanged`` (of those, rejected by an earlier run and
        not tried again: file and settings unchanged), ``rejected`` (frame -> reason, first
        50), ``reference_frame``,
        ``n_stars``, ``photometry_dir``. ``"error"`` when the config cannot be read, the
        dataset holds no frame, or no frame could be measured at all.
    """
    red_dir = Path(red_dir)
    with old_objects_out_of_gc():   # no full garbage collection pass over the imports
        result = measure_dataset(red_dir, config=reduction_config(red_dir, pipeline))
    done = len(result.measured) + len(result.skipped)
    status = {
        "status": "success" if done else "error",
        "red_dir": str(red_dir),
        "n_frames": result.n_frames,
        "n_measured": len(result.measured),
        "n_skipped": len(result.skipped),
        "n_rejected": len(result.rejected),
        "n_rejected_unchanged": len(result.unchanged_rejected),
        "rejected": _first(result.rejected),
        "reference_frame": result.reference_frame,
        "n_stars": result.n_stars,
        "photometry_dir": str(result.photometry_dir),
        "rejected_file": str(result.photometry_dir / REJECTED_FRAMES),
    }
    if not done:
        status["error"] = (f"{red_dir}: no frame measured ({result.n_frames} frames at its "
                           f"top and in data/, {len(result.rejected)} rejected)")
    return status


@pipeline_step()
def lightcurve(red_dir, pipeline=None):
    """Step: build and write the dataset's light curve (`pipekit.lightcurve`).

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder, photometry already measured.
    pipeline : Pipeline, optional
        The running pipeline (passed by the step engine): its config, loaded once per run.

    Returns
    -------
    dict
        ``status``, ``n_points``, ``n_flagged``, ``n_rejected``, ``rejected`` (frame ->
        reason, first 50), ``ecsv``, ``csv``, ``png`` (paths).
    """
    red_dir = Path(red_dir)
    with old_objects_out_of_gc():   # no full garbage collection pass over the imports
        lc = build_lightcurve(red_dir, config=reduction_config(red_dir, pipeline))
        paths = write_lightcurve(lc, red_dir)
    n_flagged = int((lc.table["flags"] != 0).sum())
    return {
        "status": "success",
        "red_dir": str(red_dir),
        "target": lc.target,
        "filter": lc.filter,
        "n_points": len(lc),
        "n_flagged": n_flagged,
        "n_rejected": len(lc.rejected),
        "rejected": _first(lc.rejected),
        **{key: str(path) for key, path in paths.items()},
    }


def _find_tom_csv(red_dir, target_name):
    """The dataset's TOM CSV: ``<target>_<filter>_lc.csv``, else the one ``*_lc.csv``."""
    red_dir = Path(red_dir)
    exact = lightcurve_paths(red_dir, target_name, red_dir.name)[1]
    if exact.is_file():
        return exact
    found = sorted(p for p in red_dir.glob("*_lc.csv") if not p.name.startswith("."))
    if len(found) == 1:
        return found[0]
    return None


# A TOM failure raises, so that the step's retries apply.
@pipeline_step(isolate=())
def upload(red_dir, pipeline=None):
    """Upload the dataset's light curve to the TOM named in its reduction config.

    Reads ``tom.upload``, ``tom.config_file`` and ``tom.data_label`` from the
    dataset's config (`reduction_config`) and the TOM's address and credentials
    from that ``tom_config.yaml``. The data product's label is
    ``<data_label>_<instrument class>_<filter>`` (from the dataset folder), so
    each dataset of a target keeps its own product and a re-run replaces
    only its own.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder ``<data_reduction_dir>/<target>/<instrument class>/<filter>/``.
    pipeline : Pipeline, optional
        The running pipeline (passed by the step engine): its config, loaded once per run.

    Returns
    -------
    dict
        ``status`` "success" with ``skipped: True`` when ``tom.upload`` is
        false; else ``product_id``, ``product`` (the TOM's id), ``target_id``,
        ``data_label``, ``points``, ``already_existed``, ``replaced`` and
        ``csv``; ``skipped: True`` too when the CSV holds no points. ``status``
        "error" when the dataset has no light curve CSV.

    Raises
    ------
    ConfigError, TOMError
        A bad config or a TOM failure (the step's ``retries`` apply).
    """
    red_dir = Path(red_dir)
    config = reduction_config(red_dir, pipeline)
    if not config.tom.upload:
        return {"status": "success", "skipped": True, "reason": "tom.upload is false"}
    csv_path = _find_tom_csv(red_dir, config.target.name)
    if csv_path is None:
        expected = lightcurve_paths(red_dir, config.target.name, red_dir.name)[1].name
        return {"status": "error", "error": f"{red_dir}: no light curve for the TOM "
                                            f"({expected}); run the lightcurve step first"}
    with open(csv_path, encoding="utf-8") as fh:
        rows = sum(1 for line in fh if line.strip()) - 1
    if rows < 1:
        # Every point flagged: nothing to publish, and the TOM's last good
        # light curve is better left where it is.
        log.warning("%s: %s has no points; nothing uploaded", red_dir, csv_path.name)
        return {"status": "success", "skipped": True, "reason": f"{csv_path.name} has no points",
                "csv": str(csv_path)}
    label = f"{config.tom.data_label}_{red_dir.parent.name}_{red_dir.name}"
    with TOMClient.from_config(load_tom_config(config.tom.config_file)) as tom:
        result = tom.upload_photometry(config.target.name, csv_path, label)
    log.info("%s: uploaded %d points to the TOM as %s (replaced %s)", red_dir,
             result["points"], result["product_id"], result["replaced"] or "nothing")
    return {"status": "success", "skipped": False, "product_id": result["product_id"],
            "product": result["id"], "target_id": result["target_id"], "data_label": label,
            "points": result["points"], "already_existed": result["already_existed"],
            "replaced": result["replaced"], "csv": str(csv_path)}

