"""YAML configuration files: load, validate once at the edge, return dataclasses.

Four files, key-compatible with the existing microlensing pipeline: ``data_download.yaml``,
``reduction_config.yaml`` (one per dataset), ``reduction_manager_config.yaml`` and
``tom_config.yaml``. One validator, driven by the dataclasses' field types, reads them all;
errors name the file, the dotted key, the value and what was expected.
"""

import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .config_schema import (DATE, MISSING, NOT_IN_FILE, UNSET_STRINGS, Section, build,
                            is_unset, read_yaml, yaml_key)
from .config_templates import TEMPLATES, template_path, write_reduction_config
from .errors import ConfigError
from .lco import parse_dec, parse_ra
from .secrets import register_envvar

__all__ = [
    "ArchiveConfig", "DownloadConfig", "TargetConfig", "PhotometryConfig", "TomSettings",
    "CalibrationConfig",
    "ReductionConfig", "DatasetSelection", "ManagerConfig", "TOMConfig",
    "load_download_config", "load_reduction_config", "load_manager_config", "load_tom_config",
    "write_reduction_config", "template_path", "TEMPLATES", "is_unset", "DATETIME_FORMAT",
    "UNSET_STRINGS", "CONFIG_NAME",
]

log = logging.getLogger("pipekit.config")

#: The format of ``start_datetime`` / ``end_datetime`` in ``data_download.yaml``.
DATETIME_FORMAT = "%Y-%m-%d %H:%M"

#: A dataset's configuration file, at the top of its folder.
CONFIG_NAME = "reduction_config.yaml"

_GROUPS = frozenset({"all", "date", "recent", "file"})


# ---- records ----------------------------------------------------------------

@dataclass
class ArchiveConfig:
    """One archive of ``data_download.yaml`` (``archives.<name>``).

    The token itself is never stored: ``token_envvar`` names the environment
    variable read at call time.
    """

    name: str
    active: bool = True
    url: str = "https://archive-api.lco.global"
    token_envvar: str | None = None
    proposals: list[str] = field(default_factory=list)
    reduction_level_image: int = field(default=91, metadata=yaml_key("reduction_level.image",
                                                                       minimum=0))
    #: Accepted for compatibility with the existing pipeline's files, and ignored:
    #: pipekit downloads images only.
    reduction_level_spectrum: int | None = field(default=0, metadata=yaml_key(
        "reduction_level.spectrum", minimum=0))
    #: Read timeout of each request in seconds (None: the client's default).
    timeout: float | None = field(default=None, metadata=yaml_key(minimum=0.1))
    #: Extra attempts after a failed request or download (None: the client's default).
    retries: int | None = field(default=None, metadata=yaml_key(minimum=0))
    #: Longest one query or one download may take, in seconds (None: the client's default).
    max_seconds: float | None = field(default=None, metadata=yaml_key(minimum=1))


@dataclass
class DownloadConfig:
    """``data_download.yaml``: where to download, from which archives, for when."""

    archives: dict[str, ArchiveConfig]
    log_dir: Path
    frame_list: Path
    data_download_dir: Path
    data_reduction_dir: Path
    start_datetime: datetime | None = None
    end_datetime: datetime | None = None
    default_red_config: Path | None = None
    source: Path | None = field(default=None, metadata=NOT_IN_FILE)
    #: Days the first run looks back when start_datetime is none (later runs start
    #: where the last successful one ended; see pipekit.archive.window).
    first_run_lookback_days: float = field(default=1.0, metadata=yaml_key(minimum=0.0))

    @property
    def active_archives(self):
        """The archives with ``active: true``, in file order."""
        return [a for a in self.archives.values() if a.active]

    def window(self, now=None):
        """The UTC time window to query.

        ``start_datetime`` / ``end_datetime`` of ``none`` mean: the last 24
        hours before ``end_datetime`` (or before now).

        Parameters
        ----------
        now : datetime, optional
            "Now" (UTC); default the current time.

        Returns
        -------
        (datetime, datetime)
            Timezone-aware UTC start and end.
        """
        now = _as_utc(now) if now is not None else datetime.now(timezone.utc)
        end = self.end_datetime or now
        start = self.start_datetime or end - timedelta(hours=24)
        return start, end


@dataclass
class TargetConfig:
    """``target`` of ``reduction_config.yaml``: name and position in degrees."""

    name: str = field(metadata=yaml_key(expected="a non-empty target name"))
    ra: float = field(metadata=yaml_key(
        "RA", ("ra",), parse=parse_ra, expected="right ascension (hours 'HH:MM:SS.s' or degrees "
        "0-360) as sexagesimal string or decimal degrees"))
    dec: float = field(metadata=yaml_key(
        "Dec", ("DEC", "dec"), parse=parse_dec, expected="declination ('+DD:MM:SS.s' or degrees "
        "-90..90) as sexagesimal string or decimal degrees"))


@dataclass
class PhotometryConfig:
    """``photometry`` of ``reduction_config.yaml``. Lengths in arcsec are turned
    into pixels per frame with its ``PIXSCALE``.

    Attributes
    ----------
    aperture_arcsec : float
        Aperture radius.
    annulus_inner_arcsec, annulus_outer_arcsec : float
        Sky annulus radii.
    max_field_stars : int
        At most this many field (comparison) stars, brightest unsaturated first.
    detection_sigma : float
        Detection threshold for field stars on the reference frame, in sky sigmas.
    sky_sigma_clip : float
        Sigma-clipping threshold of the sky annulus.
    centroid_box_arcsec : float
        Radius of the region searched by the centroid refinement of predicted
        positions (despite the historical name, a radius); 0 turns the refinement off.
    edge_margin_arcsec : float
        Stars closer than this to the frame edge are flagged.
    min_comparison_stars : int
        Fewer constant comparison stars than this: the frame is rejected.
    reference_frame : str or None
        YAML key ``reference_image`` (the existing pipeline's name; ``reference_frame``
        is accepted too): file name of the frame of the dataset to detect field stars
        on, instead of the automatic choice (the deepest frame with a good WCS).
        ``x.fits`` also names ``x.fits.fz``. None picks one.
    target_xy : list of float or None
        ``[x, y]`` (0-based pixels) of the target on the reference frame, for a target too
        faint to centroid there; None centroids it near its WCS position.
    min_field_stars : int
        Fewer field stars detected on the reference frame than this: the step fails.
    align_max_shift_arcsec : float
        Largest offset of a frame's header WCS (``WCSERR`` 0) from the stars that alignment
        accepts; frames with a failed astrometric fit (``WCSERR`` non-zero) are searched
        without a bound.
    align_max_rotation_deg : float
        Largest rotation between a frame and the reference frame's star pattern.
    align_tolerance_arcsec : float
        Distance within which a transformed reference star matches a detected one.
    cosmic_ray_sigma : float
        Noise threshold of the cosmic-ray test in the apertures; 0 turns it off.
    processes : int or None
        Processes that read and measure frames at once (`pipekit.photometry.workers`);
        None: one per CPU core available (at most 4), and 1 inside a Manager or Dask
        worker. Results do not depend on it.
    extra : dict
        Keys pipekit does not know (warned about, kept here).
    """

    aperture_arcsec: float = field(default=3.0, metadata=yaml_key(minimum=0.01))
    annulus_inner_arcsec: float = field(default=5.0, metadata=yaml_key(minimum=0.01))
    annulus_outer_arcsec: float = field(default=8.0, metadata=yaml_key(minimum=0.01))
    max_field_stars: int = field(default=200, metadata=yaml_key(minimum=1))
    detection_sigma: float = field(default=5.0, metadata=yaml_key(minimum=0.1))
    sky_sigma_clip: float = field(default=3.0, metadata=yaml_key(minimum=0.5))
    centroid_box_arcsec: float = field(default=3.0, metadata=yaml_key(minimum=0))
    edge_margin_arcsec: float = field(default=5.0, metadata=yaml_key(minimum=0))
    min_comparison_stars: int = field(default=3, metadata=yaml_key(minimum=1))
    reference_frame: str | None = field(default=None, metadata=yaml_key(
        "reference_image", ("reference_frame",), expected="the file name of one of the "
        "dataset's frames, or none"))
    target_xy: list | None = field(default=None, metadata=yaml_key(
        parse=lambda v: _pixel_pair(v), expected="[x, y]: two pixel coordinates"))
    min_field_stars: int = field(default=5, metadata=yaml_key(minimum=3))
    align_max_shift_arcsec: float = field(default=25.0, metadata=yaml_key(minimum=0.1))
    align_max_rotation_deg: float = field(default=3.0, metadata=yaml_key(minimum=0))
    align_tolerance_arcsec: float = field(default=0.8, metadata=yaml_key(minimum=0.01))
    cosmic_ray_sigma: float = field(default=6.0, metadata=yaml_key(minimum=0))
    processes: int | None = field(default=None, metadata=yaml_key(minimum=1))
    extra: dict = field(default_factory=dict, metadata={"extra": True})


def _pixel_pair(value):
    """``[x, y]`` as two finite floats, else None (the validator then names the key)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    try:
        xy = [float(v) for v in value if not isinstance(v, bool)]
    except (TypeError, ValueError):
        return None
    return xy if len(xy) == 2 and all(math.isfinite(v) for v in xy) else None


@dataclass
class TomSettings:
    """``tom`` of ``reduction_config.yaml``: whether and how to upload."""

    upload: bool = False
    config_file: Path | None = None
    data_label: str = "pipekit"


@dataclass
class CalibrationConfig:
    """``calibration`` of ``reduction_config.yaml``: where calibrated magnitudes come from.

    In order (`pipekit.calibration`): the frames' BANZAI zero points (``L1ZP``) when
    ``use_banzai_zeropoints``, else the reference ``catalogue`` when one is named, else
    instrumental magnitudes, labelled as such.

    Attributes
    ----------
    use_banzai_zeropoints : bool
        Use the frames' ``L1ZP``/``L1ZPERR`` headers where valid.
    catalogue : Path or None
        A local table (any format astropy reads: CSV, ECSV, FITS) of reference stars with
        RA, Dec (degrees) and magnitudes in the dataset's filter.
    ra_column, dec_column, mag_column : str
        The catalogue's columns.
    mag_err_column : str or None
        Its magnitude errors (optional).
    match_arcsec : float
        A field star matches a catalogue star within this distance.
    min_stars : int
        Fewer matched stars (or frames with a valid ``L1ZP``) than this: that source is
        not used.
    """

    use_banzai_zeropoints: bool = True
    catalogue: Path | None = None
    ra_column: str = "ra"
    dec_column: str = "dec"
    mag_column: str = "mag"
    mag_err_column: str | None = None
    match_arcsec: float = field(default=1.0, metadata=yaml_key(minimum=0.01))
    min_stars: int = field(default=3, metadata=yaml_key(minimum=1))


@dataclass
class ReductionConfig:
    """One dataset's ``reduction_config.yaml``."""

    target: TargetConfig
    photometry: PhotometryConfig = field(default_factory=PhotometryConfig)
    tom: TomSettings = field(default_factory=TomSettings)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    source: Path | None = field(default=None, metadata=NOT_IN_FILE)


@dataclass
class DatasetSelection:
    """``dataset_selection`` of ``reduction_manager_config.yaml``.

    ``group`` is ``"all"``, ``"date"`` (datasets with frames observed from
    ``start_date`` to ``end_date``, both days included; no ``end_date``: up to
    now), ``"recent"`` (frames in the last ``ndays`` days) or ``"file"``
    (dataset folders listed in ``file``, one a line). Applied by
    `pipekit.selection.select_datasets`.
    """

    group: str = field(default="all", metadata=yaml_key(choices=_GROUPS))
    file: Path | None = None
    start_date: datetime | None = field(default=None, metadata=yaml_key(expected=DATE))
    end_date: datetime | None = field(default=None, metadata=yaml_key(expected=DATE))
    ndays: float | None = field(default=None, metadata=yaml_key(minimum=0))


@dataclass
class ManagerConfig:
    """``reduction_manager_config.yaml``: which datasets to reduce, how many at once."""

    log_dir: Path
    data_reduction_dir: Path
    instrument_list: list[str] = field(default_factory=list)
    dataset_selection: DatasetSelection = field(default_factory=DatasetSelection)
    max_parallel: int = field(default=4, metadata=yaml_key(minimum=1))
    #: Accepted for compatibility with the existing pipeline's files, and unused: it named
    #: that pipeline's installation, whose script each dataset ran in; pipekit runs its own.
    software_dir: Path | None = None
    source: Path | None = field(default=None, metadata=NOT_IN_FILE)


@dataclass
class TOMConfig:
    """``tom_config.yaml``. Secrets are never stored: only the names of the
    environment variables holding them, read by `secret` at call time."""

    url: str
    username: str | None = None
    password_envvar: str | None = None
    token_envvar: str | None = None
    groups: list[str] = field(default_factory=list)
    timeout: float = field(default=30.0, metadata=yaml_key(minimum=0.1))
    #: Longest one request (with retries) or one listing may take, in seconds.
    max_seconds: float = field(default=600.0, metadata=yaml_key(minimum=1))
    source: Path | None = field(default=None, metadata=NOT_IN_FILE)

    @property
    def auth_kind(self):
        """``"basic"`` (username + password) or ``"token"``."""
        return "token" if self.token_envvar else "basic"

    def secret(self):
        """The password or token, read from its environment variable now.

        Raises
        ------
        ConfigError
            Naming the variable (never a value) when it is unset or empty.
        """
        name = self.token_envvar or self.password_envvar
        key = "token_envvar" if self.token_envvar else "password_envvar"
        value = os.environ.get(name, "")
        if not value:
            raise ConfigError(f"{self.source or 'tom_config.yaml'}: environment variable {name} "
                              f"(named by '{key}') is not set; export it before talking to the TOM")
        return value


def _as_utc(value):
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _refuse_literal_secret(source, section, key, envkey):
    if key in section.data:  # the value is never repeated
        raise ConfigError(f"{source}: key '{section.key(key)}' holds a secret in the file; "
                          f"pipekit reads secrets only from the environment: remove it, "
                          f"export the value in an environment variable and name that "
                          f"variable in '{section.key(envkey)}'")


# ---- loaders -----------------------------------------------------------------------

def load_download_config(path):
    """Load and validate ``data_download.yaml``.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    DownloadConfig
        Relative paths are resolved against the file's folder. ``frame_list``
        defaults to ``<log_dir>/frame_list.txt``.

    Raises
    ------
    ConfigError
        Naming the file, the dotted key, the value and what was expected.
    """
    source, data = read_yaml(path)
    top = Section(source, data)
    if top.raw("archives") is MISSING:
        top.fail("archives", MISSING, "a mapping of keys")
    archives_section = top.section("archives")
    archives = {}
    for key in archives_section.data:
        sub = archives_section.section(key)
        _refuse_literal_secret(source, sub, "token", "token_envvar")
        archive = build(ArchiveConfig, sub, defaults={"name": str(key)})
        archive.url = archive.url.rstrip("/")
        if not archive.url.startswith(("http://", "https://", "file://", "/")):
            sub.fail("url", archive.url, "an http(s):// URL or a local folder")
        archives[archive.name] = archive
    if not archives:
        raise ConfigError(f"{source}: key 'archives' is empty; expected at least one archive")
    config = build(DownloadConfig, top, defaults={"frame_list": None},
                    given={"archives": archives, "source": source})
    if config.frame_list is None:
        config.frame_list = config.log_dir / "frame_list.txt"
    if (config.start_datetime and config.end_datetime
            and config.start_datetime >= config.end_datetime):
        raise ConfigError(f"{source}: key 'start_datetime' = "
                          f"{config.start_datetime:{DATETIME_FORMAT}} is not before "
                          f"'end_datetime' = {config.end_datetime:{DATETIME_FORMAT}}; "
                          "expected start < end")
    top.unknown()
    return config


def load_reduction_config(path):
    """Load and validate a dataset's ``reduction_config.yaml``.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ReductionConfig
        ``target.RA`` / ``target.Dec`` (sexagesimal strings or degrees) become
        degrees; missing photometry keys take the `PhotometryConfig` defaults.

    Raises
    ------
    ConfigError
        Naming the file, the dotted key, the value and what was expected.
    """
    source, data = read_yaml(path)
    top = Section(source, data)
    config = build(ReductionConfig, top, given={"source": source})
    phot, sec = config.photometry, top.section("photometry")
    if phot.annulus_inner_arcsec < phot.aperture_arcsec:
        sec.fail("annulus_inner_arcsec", phot.annulus_inner_arcsec,
                 f"a radius >= aperture_arcsec ({phot.aperture_arcsec})")
    if phot.annulus_outer_arcsec <= phot.annulus_inner_arcsec:
        sec.fail("annulus_outer_arcsec", phot.annulus_outer_arcsec,
                 f"a radius > annulus_inner_arcsec ({phot.annulus_inner_arcsec})")
    if config.tom.upload and config.tom.config_file is None:
        top.section("tom").fail("config_file", None,
                                "the path of a tom_config.yaml when 'tom.upload' is true")
    top.unknown()
    return config


def load_manager_config(path):
    """Load and validate ``reduction_manager_config.yaml``.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ManagerConfig
        ``instrument_list`` holds instrument classes or camera names as
        written (lower case); empty means every instrument.

    Raises
    ------
    ConfigError
        Naming the file, the dotted key, the value and what was expected.
    """
    source, data = read_yaml(path)
    top = Section(source, data)
    config = build(ManagerConfig, top, given={"source": source})
    config.instrument_list = [s.lower() for s in config.instrument_list]
    selection, sel = config.dataset_selection, top.section("dataset_selection")
    if selection.group == "file" and selection.file is None:
        sel.fail("file", MISSING, "the path of a file listing datasets when group is 'file'")
    if selection.group == "recent" and selection.ndays is None:
        sel.fail("ndays", MISSING, "a number of days when group is 'recent'")
    if selection.group == "date" and selection.start_date is None:
        sel.fail("start_date", MISSING, "a date 'YYYY-MM-DD' when group is 'date'")
    if selection.start_date and selection.end_date and selection.end_date < selection.start_date:
        sel.fail("end_date", f"{selection.end_date:%Y-%m-%d}",
                 f"a day on or after start_date ({selection.start_date:%Y-%m-%d})")
    top.unknown()
    return config


_SECRET_KEYS = {"password": "password_envvar", "token": "token_envvar",
                "api_key": "token_envvar", "apikey": "token_envvar"}


def load_tom_config(path):
    """Load and validate ``tom_config.yaml``.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    TOMConfig
        Exactly one of ``password_envvar`` (HTTP Basic, needs ``username``)
        and ``token_envvar`` (``Authorization: Token``) is set.

    Raises
    ------
    ConfigError
        Naming the file and key. A literal ``password`` or ``token`` key is an
        error (its value is never repeated): secrets belong in environment variables.
    """
    source, data = read_yaml(path)
    top = Section(source, data)
    for key, envkey in _SECRET_KEYS.items():
        _refuse_literal_secret(source, top, key, envkey)
    config = build(TOMConfig, top, given={"source": source})
    config.url = config.url.rstrip("/")
    if not config.url.startswith(("http://", "https://")):
        top.fail("url", config.url, "an http:// or https:// URL")
    if bool(config.password_envvar) == bool(config.token_envvar):
        raise ConfigError(f"{source}: expected exactly one of 'password_envvar' (HTTP Basic) or "
                          f"'token_envvar' (API token), found "
                          f"{'both' if config.password_envvar else 'neither'}")
    if config.password_envvar and not config.username:
        top.fail("username", MISSING, "a user name when 'password_envvar' is used (HTTP Basic)")
    top.unknown()
    register_envvar(config.token_envvar)  # scrubbed from every message from now on
    register_envvar(config.password_envvar, config.username)
    return config
