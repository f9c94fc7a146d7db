"""YAML configuration files: load, validate once at the edge, return dataclasses.

Four files, key-compatible with the existing microlensing pipeline: ``data_download.yaml``,
``reduction_config.yaml`` (one per dataset), ``reduction_manager_config.yaml`` and
``tom_config.yaml``. Errors name the file, the dotted key, the value and what was expected.
"""

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import yaml

from .atomic import TMP_PREFIX
from .errors import ConfigError

__all__ = [
    "ArchiveConfig", "DownloadConfig", "TargetConfig", "PhotometryConfig", "TomSettings",
    "ReductionConfig", "DatasetSelection", "ManagerConfig", "TOMConfig",
    "load_download_config", "load_reduction_config", "load_manager_config", "load_tom_config",
    "write_reduction_config", "template_path", "DATETIME_FORMAT",
]

log = logging.getLogger("pipekit.config")

#: The format of ``start_datetime`` / ``end_datetime`` in ``data_download.yaml``.
DATETIME_FORMAT = "%Y-%m-%d %H:%M"

TEMPLATES = Path(__file__).resolve().parent / "templates"


def template_path(name):
    """Path of a template shipped with pipekit, e.g. ``template_path("tom_config.yaml")``."""
    path = TEMPLATES / name
    if not path.exists():
        raise ConfigError(f"{path}: no such pipekit template")
    return path


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
    reduction_level_image: int = 91
    reduction_level_spectrum: int | None = 0
    #: Read timeout of each request in seconds (None: the client's default).
    timeout: float | None = None
    #: Extra attempts after a failed request or download (None: the client's default).
    retries: int | None = None


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
    source: Path | None = None
    #: Days the first run looks back when start_datetime is none (later runs start
    #: where the last successful one ended; see pipekit.archive.window).
    first_run_lookback_days: float = 1.0

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

    name: str
    ra: float
    dec: float


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
        Size of the box for the centroid refinement of predicted positions;
        0 turns the refinement off.
    edge_margin_arcsec : float
        Stars closer than this to the frame edge are flagged.
    min_comparison_stars : int
        Fewer constant comparison stars than this: the frame is rejected.
    reference_frame : str or None
        File name of the frame to detect field stars on; None picks one.
    extra : dict
        Keys pipekit does not know (warned about, kept here).
    """

    aperture_arcsec: float = 3.0
    annulus_inner_arcsec: float = 5.0
    annulus_outer_arcsec: float = 8.0
    max_field_stars: int = 200
    detection_sigma: float = 5.0
    sky_sigma_clip: float = 3.0
    centroid_box_arcsec: float = 3.0
    edge_margin_arcsec: float = 5.0
    min_comparison_stars: int = 3
    reference_frame: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class TomSettings:
    """``tom`` of ``reduction_config.yaml``: whether and how to upload."""

    upload: bool = False
    config_file: Path | None = None
    data_label: str = "pipekit"


@dataclass
class ReductionConfig:
    """One dataset's ``reduction_config.yaml``."""

    target: TargetConfig
    photometry: PhotometryConfig = field(default_factory=PhotometryConfig)
    tom: TomSettings = field(default_factory=TomSettings)
    source: Path | None = None


@dataclass
class DatasetSelection:
    """``dataset_selection`` of ``reduction_manager_config.yaml``.

    ``group`` is ``"all"``, ``"date"`` (datasets with frames observed from
    ``start_date`` to ``end_date``, both days included; no ``end_date``: up to
    now), ``"recent"`` (frames in the last ``ndays`` days) or ``"file"``
    (dataset folders listed in ``file``, one a line). Applied by
    `pipekit.datasets.select_datasets`.
    """

    group: str = "all"
    file: Path | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    ndays: float | None = None


@dataclass
class ManagerConfig:
    """``reduction_manager_config.yaml``: which datasets to reduce, how many at once."""

    log_dir: Path
    data_reduction_dir: Path
    instrument_list: list[str] = field(default_factory=list)
    dataset_selection: DatasetSelection = field(default_factory=DatasetSelection)
    max_parallel: int = 4
    source: Path | None = None


@dataclass
class TOMConfig:
    """``tom_config.yaml``. Secrets are never stored: only the names of the
    environment variables holding them, read by `secret` at call time."""

    url: str
    username: str | None = None
    password_envvar: str | None = None
    token_envvar: str | None = None
    groups: list[str] = field(default_factory=list)
    timeout: float = 30.0
    source: Path | None = None

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


# ---- validation helpers -------------------------------------------------------

_MISSING = object()
_NONE_STRINGS = {"", "none", "null", "~"}


class _Section:
    """A mapping being validated: knows its file and dotted prefix for messages."""

    def __init__(self, source, data, prefix=""):
        self.source = source
        self.data = data
        self.prefix = prefix
        self.seen = set()

    def key(self, name):
        return f"{self.prefix}{name}"

    def fail(self, name, value, expected):
        shown = "" if value is _MISSING else f" = {value!r}"
        if value is _MISSING:
            raise ConfigError(f"{self.source}: required key '{self.key(name)}' is missing; "
                              f"expected {expected}")
        raise ConfigError(f"{self.source}: key '{self.key(name)}'{shown}: expected {expected}")

    def raw(self, name, required=False, expected="a value"):
        self.seen.add(name)
        value = self.data.get(name, _MISSING)
        if value is _MISSING and required:
            self.fail(name, _MISSING, expected)
        return value

    def section(self, name, required=False):
        value = self.raw(name, required, "a mapping of keys")
        if value is _MISSING or value is None:
            return _Section(self.source, {}, f"{self.key(name)}.")
        if not isinstance(value, dict):
            self.fail(name, value, "a mapping of keys")
        return _Section(self.source, value, f"{self.key(name)}.")

    def string(self, name, required=False, default=None, choices=None):
        expected = f"one of {sorted(choices)}" if choices else "a string"
        value = self.raw(name, required, expected)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(name, value, expected)
        value = str(value).strip()
        if choices and value.lower() not in choices:
            self.fail(name, value, expected)
        return value.lower() if choices else value

    def boolean(self, name, default):
        value = self.raw(name)
        if value is _MISSING or value is None:
            return default
        words = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        if not isinstance(value, bool):
            self.fail(name, value, "true or false")
        return value

    def number(self, name, default, *, kind=float, minimum=None, required=False):
        expected = "an integer" if kind is int else "a number"
        if minimum is not None:
            expected += f" >= {minimum}"
        value = self.raw(name, required, expected)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, value, expected)
        if kind is int and value != int(value):
            self.fail(name, value, expected)
        value = kind(value)
        if minimum is not None and value < minimum:
            self.fail(name, value, expected)
        return value

    def strings(self, name, default=()):
        value = self.raw(name)
        if value is _MISSING or value is None:
            return list(default)
        if isinstance(value, str):
            return [value] if value.strip() else []
        if not isinstance(value, list) or not all(
                isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            self.fail(name, value, "a list of strings")
        return [str(v) for v in value]

    def path(self, name, required=False, default=None):
        value = self.raw(name, required, "a path")
        if value is _MISSING or value is None or (isinstance(value, str)
                                                  and value.strip().lower() in _NONE_STRINGS):
            if required:
                self.fail(name, value, "a path")
            return default
        if not isinstance(value, str):
            self.fail(name, value, "a path (string)")
        path = Path(os.path.expandvars(value.strip())).expanduser()
        if not path.is_absolute() and isinstance(self.source, Path):
            path = self.source.parent / path
        return Path(os.path.normpath(path))

    def warn_unknown(self):
        unknown = sorted(str(k) for k in self.data if k not in self.seen)
        if unknown:
            log.warning("%s: unknown key(s) %s ignored", self.source,
                        ", ".join(f"'{self.key(k)}'" for k in unknown))
        return {k: self.data[k] for k in self.data if k not in self.seen}


def _read_yaml(path):
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, "
                          f"found {type(data).__name__}")
    return path.resolve(), data


def _as_utc(value):
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _datetime(section, name, *, date_only=False):
    """'%Y-%m-%d %H:%M' (or ISO, or a YAML date/datetime) -> aware UTC datetime; 'none' -> None."""
    expected = ("a date 'YYYY-MM-DD' or 'none'" if date_only
                else "a UTC date-time 'YYYY-MM-DD HH:MM' or 'none'")
    value = section.raw(name)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, datetime):
        return _as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if not isinstance(value, str):
        section.fail(name, value, expected)
    text = value.strip()
    if text.lower() in _NONE_STRINGS:
        return None
    for fmt in (DATETIME_FORMAT, "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d"):
        try:
            return datetime.strptime(text.rstrip("Z"), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    try:
        return _as_utc(datetime.fromisoformat(text))
    except ValueError:
        section.fail(name, value, expected)


def _angle(section, name, parser, what):
    expected = (f"{what} as sexagesimal string or decimal degrees")
    value = section.raw(name, True, expected)
    result = parser(value)
    if result is None:
        section.fail(name, value, expected)
    return result


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
    source, data = _read_yaml(path)
    top = _Section(source, data)
    archives_section = top.section("archives", required=True)
    archives = {}
    for key, raw in archives_section.data.items():
        archives_section.seen.add(key)
        sub = archives_section.section(key)
        if raw is not None and not isinstance(raw, dict):
            archives_section.fail(key, raw, "a mapping of archive settings")
        levels = sub.section("reduction_level")
        archive = ArchiveConfig(
            name=sub.string("name", default=str(key)),
            active=sub.boolean("active", True),
            url=(sub.string("url", default=ArchiveConfig.url) or "").rstrip("/"),
            token_envvar=sub.string("token_envvar"),
            proposals=sub.strings("proposals"),
            reduction_level_image=levels.number("image", 91, kind=int, minimum=0),
            reduction_level_spectrum=levels.number("spectrum", 0, kind=int, minimum=0),
            timeout=sub.number("timeout", None, minimum=0.1),
            retries=sub.number("retries", None, kind=int, minimum=0),
        )
        if not archive.url.startswith(("http://", "https://", "file://", "/")):
            sub.fail("url", archive.url, "an http(s):// URL or a local folder")
        if "token" in sub.data:
            raise ConfigError(f"{source}: key '{sub.key('token')}' holds a secret in the file; put "
                              "the token in an environment variable and name it in "
                              f"'{sub.key('token_envvar')}'")
        levels.warn_unknown()
        sub.warn_unknown()
        archives[archive.name] = archive
    if not archives:
        raise ConfigError(f"{source}: key 'archives' is empty; expected at least one archive")

    log_dir = top.path("log_dir", required=True)
    config = DownloadConfig(
        archives=archives,
        log_dir=log_dir,
        frame_list=top.path("frame_list", default=log_dir / "frame_list.txt"),
        data_download_dir=top.path("data_download_dir", required=True),
        data_reduction_dir=top.path("data_reduction_dir", required=True),
        start_datetime=_datetime(top, "start_datetime"),
        end_datetime=_datetime(top, "end_datetime"),
        default_red_config=top.path("default_red_config"),
        source=source,
        first_run_lookback_days=top.number("first_run_lookback_days", 1.0, minimum=0.0),
    )
    if (config.start_datetime and config.end_datetime
            and config.start_datetime >= config.end_datetime):
        raise ConfigError(f"{source}: key 'start_datetime' = "
                          f"{config.start_datetime:{DATETIME_FORMAT}} is not before "
                          f"'end_datetime' = {config.end_datetime:{DATETIME_FORMAT}}; "
                          "expected start < end")
    top.warn_unknown()
    return config


def _load_photometry(top):
    sec = top.section("photometry")
    d = PhotometryConfig()
    phot = PhotometryConfig(
        aperture_arcsec=sec.number("aperture_arcsec", d.aperture_arcsec, minimum=0.01),
        annulus_inner_arcsec=sec.number("annulus_inner_arcsec", d.annulus_inner_arcsec,
                                        minimum=0.01),
        annulus_outer_arcsec=sec.number("annulus_outer_arcsec", d.annulus_outer_arcsec,
                                        minimum=0.01),
        max_field_stars=sec.number("max_field_stars", d.max_field_stars, kind=int, minimum=1),
        detection_sigma=sec.number("detection_sigma", d.detection_sigma, minimum=0.1),
        sky_sigma_clip=sec.number("sky_sigma_clip", d.sky_sigma_clip, minimum=0.5),
        centroid_box_arcsec=sec.number("centroid_box_arcsec", d.centroid_box_arcsec, minimum=0),
        edge_margin_arcsec=sec.number("edge_margin_arcsec", d.edge_margin_arcsec, minimum=0),
        min_comparison_stars=sec.number("min_comparison_stars", d.min_comparison_stars, kind=int,
                                        minimum=1),
        reference_frame=sec.string("reference_frame"),
    )
    if phot.annulus_inner_arcsec < phot.aperture_arcsec:
        sec.fail("annulus_inner_arcsec", phot.annulus_inner_arcsec,
                 f"a radius >= aperture_arcsec ({phot.aperture_arcsec})")
    if phot.annulus_outer_arcsec <= phot.annulus_inner_arcsec:
        sec.fail("annulus_outer_arcsec", phot.annulus_outer_arcsec,
                 f"a radius > annulus_inner_arcsec ({phot.annulus_inner_arcsec})")
    phot.extra = sec.warn_unknown()
    return phot


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
    from .frames import parse_dec, parse_ra

    source, data = _read_yaml(path)
    top = _Section(source, data)
    tsec = top.section("target", required=True)
    # The existing pipeline writes RA/Dec; accept the lower-case spellings too.
    ra_key = next((k for k in ("RA", "ra") if k in tsec.data), "RA")
    dec_key = next((k for k in ("Dec", "DEC", "dec") if k in tsec.data), "Dec")
    target = TargetConfig(
        name=tsec.string("name", required=True),
        ra=_angle(tsec, ra_key, parse_ra, "right ascension (hours 'HH:MM:SS.s' or degrees 0-360)"),
        dec=_angle(tsec, dec_key, parse_dec, "declination ('+DD:MM:SS.s' or degrees -90..90)"),
    )
    if not target.name:
        tsec.fail("name", target.name, "a non-empty target name")
    tsec.warn_unknown()
    photometry = _load_photometry(top)
    tom_sec = top.section("tom")
    tom = TomSettings(
        upload=tom_sec.boolean("upload", False),
        config_file=tom_sec.path("config_file"),
        data_label=tom_sec.string("data_label", default=TomSettings.data_label),
    )
    if tom.upload and tom.config_file is None:
        tom_sec.fail("config_file", None, "the path of a tom_config.yaml when 'tom.upload' is true")
    tom_sec.warn_unknown()
    top.warn_unknown()
    return ReductionConfig(target=target, photometry=photometry, tom=tom, source=source)


_GROUPS = {"all", "date", "recent", "file"}


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
    source, data = _read_yaml(path)
    top = _Section(source, data)
    sel = top.section("dataset_selection")
    selection = DatasetSelection(
        group=sel.string("group", default="all", choices=_GROUPS),
        file=sel.path("file"),
        start_date=_datetime(sel, "start_date", date_only=True),
        end_date=_datetime(sel, "end_date", date_only=True),
        ndays=sel.number("ndays", None, minimum=0),
    )
    if selection.group == "file" and selection.file is None:
        sel.fail("file", _MISSING, "the path of a file listing datasets when group is 'file'")
    if selection.group == "recent" and selection.ndays is None:
        sel.fail("ndays", _MISSING, "a number of days when group is 'recent'")
    if selection.group == "date" and selection.start_date is None:
        sel.fail("start_date", _MISSING, "a date 'YYYY-MM-DD' when group is 'date'")
    if selection.start_date and selection.end_date and selection.end_date < selection.start_date:
        sel.fail("end_date", f"{selection.end_date:%Y-%m-%d}",
                 f"a day on or after start_date ({selection.start_date:%Y-%m-%d})")
    sel.warn_unknown()
    config = ManagerConfig(
        log_dir=top.path("log_dir", required=True),
        data_reduction_dir=top.path("data_reduction_dir", required=True),
        instrument_list=[s.lower() for s in top.strings("instrument_list")],
        dataset_selection=selection,
        max_parallel=top.number("max_parallel", 4, kind=int, minimum=1),
        source=source,
    )
    top.warn_unknown()
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
    source, data = _read_yaml(path)
    for key, envkey in _SECRET_KEYS.items():
        if key in data:
            raise ConfigError(f"{source}: key '{key}' holds a secret in the file; pipekit reads "
                              f"secrets only from the environment: remove '{key}', export the "
                              f"value in an environment variable and name that variable in "
                              f"'{envkey}'")
    top = _Section(source, data)
    config = TOMConfig(
        url=(top.string("url", required=True) or "").rstrip("/"),
        username=top.string("username"),
        password_envvar=top.string("password_envvar"),
        token_envvar=top.string("token_envvar"),
        groups=top.strings("groups"),
        timeout=top.number("timeout", 30.0, minimum=0.1),
        source=source,
    )
    if not config.url.startswith(("http://", "https://")):
        top.fail("url", config.url, "an http:// or https:// URL")
    if bool(config.password_envvar) == bool(config.token_envvar):
        raise ConfigError(f"{source}: expected exactly one of 'password_envvar' (HTTP Basic) or "
                          f"'token_envvar' (API token), found "
                          f"{'both' if config.password_envvar else 'neither'}")
    if config.password_envvar and not config.username:
        top.fail("username", _MISSING, "a user name when 'password_envvar' is used (HTTP Basic)")
    top.warn_unknown()
    return config


# ---- writing a reduction config from a template ----------------------------------

def _yaml_scalar(value):
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid YAML double-quoted scalar
    return repr(float(value))


def _fill_target(text, values, source):
    """Set target.name/RA/Dec in the template's text, keeping every comment and other key.

    Values on existing lines are replaced in place (a trailing comment keeps its
    column); keys the template lacks are added to its ``target:`` block, or a new
    block is put at the top.
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    in_target = False
    target_at = None
    target_indent = None
    done = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            head, _, comment = stripped.partition(" #")
            in_target = head.startswith("target:")
            if in_target:
                target_at = i
                if head.strip() != "target:":  # flow style {name: ..}: rewrite as a block
                    lines[i] = "target:" + (f"  #{comment}" if comment else "") + "\n"
            continue
        if not in_target:
            continue
        if target_indent is None:
            target_indent = indent
        if indent != target_indent:
            continue
        key, sep, rest = stripped.partition(":")
        if not sep or key not in values:
            continue
        filled = f"{' ' * indent}{key}: {values[key]}"
        hash_at = line.find(" #", indent)
        if hash_at >= 0:
            # keep the comment in its column when the new value leaves room
            comment = line[hash_at + 1:].rstrip("\n")
            filled = filled.ljust(hash_at + 1) if len(filled) < hash_at else filled + "  "
            filled += comment
        lines[i] = filled + "\n"
        done.add(key)
    missing = [f"{' ' * (target_indent or 2)}{k}: {values[k]}\n" for k in values
               if k not in done]
    if missing and target_at is not None:
        lines[target_at + 1:target_at + 1] = missing
    elif missing:
        top = 0
        while top < len(lines) and (not lines[top].strip() or lines[top].startswith("#")):
            top += 1
        lines[top:top] = ["target:\n", *missing, "\n"]
    filled_text = "".join(lines)
    try:
        data = yaml.safe_load(filled_text)
        ok = isinstance(data, dict) and isinstance(data.get("target"), dict)
    except yaml.YAMLError:
        ok = False
    if not ok:
        raise ConfigError(f"{source}: cannot fill the target into this template; expected a "
                          "YAML mapping with a top-level 'target:' block (name, RA, Dec)")
    return filled_text


def write_reduction_config(path, target_name, ra, dec, template=None):
    """Write a dataset's ``reduction_config.yaml`` from a template, never overwriting.

    The template's comments and other settings are kept; only ``target.name``,
    ``target.RA`` and ``target.Dec`` are filled in.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write (its folder must exist).
    target_name : str
    ra, dec : float or str
        Degrees, or sexagesimal strings (RA in hours).
    template : str or os.PathLike, optional
        Default ``pipekit/templates/reduction_config.yaml``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ConfigError
        When ``path`` already exists (it is left untouched), the template
        lacks a target block, or the values are not valid coordinates.

    Examples
    --------
    >>> write_reduction_config("red/reduction_config.yaml", "OGLE-2024-BLG-0034",
    ...                        "17:59:27.05", "-28:36:10.2")  # doctest: +SKIP
    """
    from .frames import parse_dec, parse_ra

    path = Path(path)
    template = Path(template) if template else TEMPLATES / "reduction_config.yaml"
    if path.exists():
        raise ConfigError(f"{path}: already exists; pipekit never overwrites a reduction config")
    if parse_ra(ra) is None:
        raise ConfigError(f"{path}: target RA {ra!r} is not a right ascension "
                          "(expected hours 'HH:MM:SS.s' or degrees 0-360)")
    if parse_dec(dec) is None:
        raise ConfigError(f"{path}: target Dec {dec!r} is not a declination "
                          "(expected '+DD:MM:SS.s' or degrees -90..90)")
    if not str(target_name).strip():
        raise ConfigError(f"{path}: empty target name; expected the frames' OBJECT")
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{template}: cannot read reduction config template ({exc})") from exc
    values = {"name": _yaml_scalar(str(target_name).strip()), "RA": _yaml_scalar(ra),
              "Dec": _yaml_scalar(dec)}
    # Templates from the existing pipeline may spell the keys differently.
    present = {ln.strip().partition(":")[0] for ln in text.splitlines()}
    for canonical, alternatives in (("RA", ("ra",)), ("Dec", ("DEC", "dec"))):
        if canonical not in present:
            for alt in alternatives:
                if alt in present:
                    values[alt] = values.pop(canonical)
                    break
    text = _fill_target(text, values, template)
    _write_new(path, text)
    log.info("wrote %s for target %s", path, target_name)
    return path


def _write_new(path, text):
    """Atomically create ``path`` with ``text``; fail if it exists (even in a race)."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a config is for people to read
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # unlike rename, link refuses to replace an existing file
        except FileExistsError:
            raise ConfigError(f"{path}: already exists; pipekit never overwrites a reduction "
                              "config") from None
        except OSError:
            # Filesystems without hard links: exclusive create, then copy the content in.
            try:
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise ConfigError(f"{path}: already exists; pipekit never overwrites a "
                                  "reduction config") from None
            with os.fdopen(fd2, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
