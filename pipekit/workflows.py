"""Ready pipelines: the nightly download and the reduction of one dataset.

Each is a short list of steps from :mod:`pipekit.steps`, tagged so that a
run can be limited (``pipe.run(["photometry"])``), with its checkpoint in a
log folder so that a crash is resumed with ``load(path).run(resume=True)``.
"""

import logging
from pathlib import Path

from . import steps
from .config import CONFIG_NAME, load_download_config, load_reduction_config
from .errors import ConfigError, LockError, PipelineError
from .locks import DatasetLock
from .pipeline import Pipeline

log = logging.getLogger("pipekit.workflows")

__all__ = ["download_pipeline", "reduction_pipeline", "DatasetPipeline", "DownloadPipeline",
           "dataset_name", "DOWNLOAD_LOCK_NAME"]

#: Network steps retry this many times (with backoff) before they fail.
NETWORK_RETRIES = 2


#: The download pipeline's lock file, in its log folder.
DOWNLOAD_LOCK_NAME = "download.lock"


class DownloadPipeline(Pipeline):
    """The download pipeline: one run at a time per config, across processes and hosts.

    Every run holds ``<log_dir>/download.lock`` (a `~pipekit.locks.DatasetLock`
    with its lease): a second run on the same config — an overlapping nightly
    cron job — stops at once with `LockError` naming the running one, before
    it downloads anything, so no frame is fetched twice and the frame list
    never gets duplicate lines.

    Raises
    ------
    LockError
        From :meth:`run`, when another live run holds the lock.
    """

    def run(self, *args, **kwargs):
        """Run as :meth:`Pipeline.run` does, holding the download lock."""
        folder = self.paths["log"]
        lock = DatasetLock(folder, pipeline_name=self.name, name=DOWNLOAD_LOCK_NAME)
        try:
            lock.acquire()
        except LockError as exc:
            raise LockError(f"another download with this config is running; this one stops "
                            f"without downloading: {exc}") from None
        try:
            return super().run(*args, **kwargs)
        finally:
            lock.release()


class DatasetPipeline(Pipeline):
    """A pipeline that holds its dataset's lock, and its config, for the whole of every run.

    The lock (``<red_dir>/dataset.lock``) is taken before the first step and
    released in ``finally``, whether the run succeeds, fails or is
    interrupted, so two processes never reduce one dataset at once.

    ``reduction_config.yaml`` is validated once at the start of every run (a
    resumed one too, so edits made meanwhile take effect) into ``config``, which
    the steps share (`pipekit.steps.reduction_config`). ``config`` is not saved in
    the checkpoint: a loaded pipeline reads the file again when it runs.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder.
    **kwargs
        Passed to :class:`~pipekit.pipeline.Pipeline`.

    Attributes
    ----------
    misplaced : str or None
        Set by `pipekit.pipeline.load` when the checkpoint was loaded from a
        folder that is no dataset's ``logs/``: why :meth:`run` refuses. A
        checkpoint loaded from another dataset's ``logs/`` (a copied dataset) is
        rebased to that dataset instead (:meth:`rebase`).

    Raises
    ------
    LockError
        From :meth:`run`, when another live process holds the dataset.
    """

    def __init__(self, red_dir, **kwargs):
        super().__init__(**kwargs)
        self.red_dir = Path(red_dir)
        self.config = None
        self.misplaced = None

    def _loaded_from(self, path):
        # A checkpoint knows where it lives: loaded from another dataset's logs/ (a
        # `cp -r` of the dataset), it works on that dataset, never on the original.
        log_dir = Path(path).resolve().parent
        own = self.paths.get("log")
        self.misplaced = None
        if own is not None and Path(own).resolve() == log_dir:
            return
        here = log_dir.parent
        if log_dir.name == "logs" and (here / CONFIG_NAME).is_file():
            log.warning("checkpoint %s was written for dataset %s; it now works on the "
                        "dataset it is in, %s, with that folder's %s", path, self.red_dir,
                        here, CONFIG_NAME)
            self.rebase(here)
        else:
            self.misplaced = (f"checkpoint {path} belongs to dataset {self.red_dir} but is not in "
                              f"its logs/ folder, nor in the logs/ folder of another dataset; "
                              f"refusing to run it (resume {self.red_dir} itself, or copy the "
                              f"whole dataset folder)")

    def rebase(self, red_dir):
        """Make this pipeline work on dataset ``red_dir``: its folder, log, name and steps.

        Every step whose ``red_dir`` argument named the old dataset gets the new
        one. Used when a checkpoint is loaded from a copied dataset folder.

        Parameters
        ----------
        red_dir : str or os.PathLike
            The dataset folder (holding ``reduction_config.yaml``).
        """
        old = self.red_dir.resolve()
        new = Path(red_dir).resolve()
        for step in self.steps:
            value = step.func_kwargs.get("red_dir")
            if value is not None and Path(value).resolve() == old:
                step.func_kwargs["red_dir"] = str(new)
        self.red_dir = new
        self.paths["log"] = new / "logs"
        self.name = dataset_name(new)
        self.misplaced = None

    def _check_steps(self):
        if getattr(self, "misplaced", None):
            raise PipelineError(self.misplaced)
        own = self.red_dir.resolve()
        for step in self.steps:
            value = step.func_kwargs.get("red_dir")
            if value is not None and Path(value).resolve() != own:
                raise PipelineError(
                    f"step {step.name!r} of pipeline {self.name!r} works on {value}, not on "
                    f"the pipeline's dataset {self.red_dir}; refused (a pipeline writes only "
                    "into its own dataset)")

    def run(self, *args, **kwargs):
        """Run as :meth:`Pipeline.run` does, holding the dataset lock and its config.

        Raises
        ------
        PipelineError
            When a step's ``red_dir`` is not this pipeline's dataset, or the
            checkpoint was loaded from a folder that is no dataset's ``logs/``.
        LockError
            When another live process holds the dataset.
        """
        self._check_steps()
        with DatasetLock(self.red_dir, pipeline_name=self.name):
            try:
                self.config = load_reduction_config(self.red_dir / CONFIG_NAME)
            except ConfigError as exc:
                # The steps that need the config read it and fail with this message,
                # recorded as their error like any other failure of theirs.
                log.error("%s", exc)
                self.config = None
            try:
                return super().run(*args, **kwargs)
            finally:
                self.config = None

    def __getstate__(self):
        state = super().__getstate__()
        state["config"] = None  # read afresh by every run, never frozen in a checkpoint
        return state


def dataset_name(red_dir):
    """A dataset's name, as its reduction pipeline is called: ``<target>/<class>/<filter>``."""
    return "/".join(Path(red_dir).resolve().parts[-3:])


def download_pipeline(config_path):
    """The nightly pipeline: download new frames, sort them, configure datasets.

    Parameters
    ----------
    config_path : str or os.PathLike
        A ``data_download.yaml``. Its ``log_dir`` holds the checkpoint.

    Returns
    -------
    DownloadPipeline
        Steps tagged ``download``, ``sort`` and ``configure``; every run holds
        ``<log_dir>/download.lock``, so two runs on one config never overlap.

    Raises
    ------
    ConfigError
        When the configuration is invalid (checked now, not at run time).

    Examples
    --------
    >>> pipe = download_pipeline("data_download.yaml")  # doctest: +SKIP
    >>> pipe.run()  # doctest: +SKIP
    """
    config_path = Path(config_path).resolve()
    config = load_download_config(config_path)
    pipe = DownloadPipeline(paths={"log": config.log_dir}, name="download")
    pipe.add_step(steps.download, tags=["download"], retries=NETWORK_RETRIES,
                  config_path=str(config_path))
    pipe.add_step(steps.sort, tags=["sort"], download_dir=str(config.data_download_dir),
                  reduction_dir=str(config.data_reduction_dir))
    template = str(config.default_red_config) if config.default_red_config else None
    pipe.add_step(steps.configure, tags=["configure"],
                  reduction_dir=str(config.data_reduction_dir), template=template)
    return pipe


def reduction_pipeline(red_dir):
    """The reduction of one dataset: photometry, light curve, upload.

    Parameters
    ----------
    red_dir : str or os.PathLike
        A dataset folder: ``reduction_config.yaml`` and the frames at its top (and
        in ``data/`` for a dataset sorted by an earlier pipekit).
        The checkpoint goes to ``<red_dir>/logs/pipeline.p``.

    Returns
    -------
    DatasetPipeline
        Steps tagged ``photometry``, ``lightcurve`` and ``upload``; every run
        holds the dataset lock.

    Raises
    ------
    ConfigError
        When ``reduction_config.yaml`` is missing or invalid.
    """
    red_dir = Path(red_dir).resolve()
    load_reduction_config(red_dir / CONFIG_NAME)  # fail early, naming the key
    name = dataset_name(red_dir)
    pipe = DatasetPipeline(red_dir, paths={"log": red_dir / "logs"}, name=name)
    # The steps get the config from the running pipeline (read once per run), not as an
    # argument: arguments are saved in the checkpoint, and a resumed run must see edits.
    pipe.add_step(steps.photometry, tags=["photometry"], red_dir=str(red_dir))
    pipe.add_step(steps.lightcurve, tags=["lightcurve"], red_dir=str(red_dir))
    pipe.add_step(steps.upload, tags=["upload"], retries=NETWORK_RETRIES, red_dir=str(red_dir))
    return pipe
