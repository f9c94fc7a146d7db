"""pipekit.config: the four YAML files load, validate with clear errors, and templates fill."""

import logging
import pickle
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipekit.config import (TEMPLATES, load_download_config, load_manager_config,
                            load_reduction_config, load_tom_config, template_path,
                            write_reduction_config)
from pipekit.errors import ConfigError

# Files as the existing microlensing pipeline writes them (same keys, its spelling).
LEGACY_DOWNLOAD = """\
archives:
    lco:
        name: lco
        active: True
        url: 'https://archive-api.lco.global/'
        token_envvar: 'LCO_API_TOKEN'
        proposals: ['KEY2024A-001', 'LCO2024A-005']
        reduction_level:
            image: 91
            spectrum: 0
    old:
        name: old_archive
        active: False
        url: 'https://archive.example.org'
        token_envvar: 'OLD_TOKEN'
        proposals: 'KEY2019B-001'
        reduction_level:
            image: 90
            spectrum: 90
log_dir: 'logs'
frame_list: 'logs/frame_list.txt'
data_download_dir: 'data/incoming'
data_reduction_dir: '/data/reduction'
start_datetime: '2024-05-01 00:00'
end_datetime: '2024-05-02 12:30'
default_red_config: 'configs/reduction_config.yaml'
"""

LEGACY_REDUCTION = """\
target:
    name: 'OGLE-2024-BLG-0034'
    RA: '17:59:27.05'
    Dec: '-28:36:10.2'
photometry:
    aperture_arcsec: 2.5
    annulus_inner_arcsec: 4.0
    annulus_outer_arcsec: 7.0
tom:
    upload: True
    config_file: '../../tom_config.yaml'
    data_label: 'LCO_1m_ip'
"""

LEGACY_MANAGER = """\
log_dir: '/data/logs'
data_reduction_dir: 'reduction'
instrument_list: ['sinistro', 'fa15']
dataset_selection:
    group: 'recent'
    file: 'none'
    start_date: 'none'
    end_date: 'none'
    ndays: 5
max_parallel: 3
"""

LEGACY_TOM = """\
url: 'https://tom.example.org/'
username: 'rstreet'
password_envvar: 'TOM_PASSWORD'
"""


def write(folder, name, text):
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---- the existing pipeline's files load unchanged -------------------------------------

def test_legacy_download_config_loads_with_every_value(tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # relative paths must not depend on the working folder
    cfg = load_download_config(write(tmp_path / "conf", "data_download.yaml", LEGACY_DOWNLOAD))
    lco = cfg.archives["lco"]
    assert (lco.name, lco.active, lco.url, lco.token_envvar) == (
        "lco", True, "https://archive-api.lco.global", "LCO_API_TOKEN")
    assert lco.proposals == ["KEY2024A-001", "LCO2024A-005"]
    assert (lco.reduction_level_image, lco.reduction_level_spectrum) == (91, 0)
    old = cfg.archives["old_archive"]
    assert old.active is False and old.proposals == ["KEY2019B-001"]
    assert [a.name for a in cfg.active_archives] == ["lco"]
    conf = tmp_path / "conf"
    assert cfg.log_dir == conf / "logs"
    assert cfg.frame_list == conf / "logs" / "frame_list.txt"
    assert cfg.data_download_dir == conf / "data" / "incoming"
    assert cfg.data_reduction_dir == Path("/data/reduction")
    assert cfg.default_red_config == conf / "configs" / "reduction_config.yaml"
    assert cfg.start_datetime == datetime(2024, 5, 1, 0, 0, tzinfo=timezone.utc)
    assert cfg.end_datetime == datetime(2024, 5, 2, 12, 30, tzinfo=timezone.utc)
    assert cfg.window() == (cfg.start_datetime, cfg.end_datetime)


def test_legacy_reduction_config_loads_with_degrees(tmp_path):
    red_dir = tmp_path / "OGLE-2024-BLG-0034" / "sinistro" / "ip"
    cfg = load_reduction_config(write(red_dir, "reduction_config.yaml", LEGACY_REDUCTION))
    assert cfg.target.name == "OGLE-2024-BLG-0034"
    assert cfg.target.ra == pytest.approx((17 + 59 / 60 + 27.05 / 3600) * 15, abs=1e-10)
    assert cfg.target.dec == pytest.approx(-(28 + 36 / 60 + 10.2 / 3600), abs=1e-10)
    assert (cfg.photometry.aperture_arcsec, cfg.photometry.annulus_inner_arcsec,
            cfg.photometry.annulus_outer_arcsec) == (2.5, 4.0, 7.0)
    assert cfg.photometry.max_field_stars == 200  # default for a key the file leaves out
    assert cfg.tom.upload is True and cfg.tom.data_label == "LCO_1m_ip"
    assert cfg.tom.config_file == tmp_path / "OGLE-2024-BLG-0034" / "tom_config.yaml"
    assert cfg.source == red_dir / "reduction_config.yaml"


def test_reduction_config_accepts_degrees_and_lowercase_keys(tmp_path):
    cfg = load_reduction_config(write(tmp_path, "r.yaml", """\
        target: {name: M84, ra: 186.2660, dec: 12.887}
        """))
    assert (cfg.target.ra, cfg.target.dec) == (186.266, 12.887)


def test_legacy_manager_config_loads(tmp_path):
    cfg = load_manager_config(write(tmp_path, "reduction_manager_config.yaml", LEGACY_MANAGER))
    assert cfg.log_dir == Path("/data/logs")
    assert cfg.data_reduction_dir == tmp_path / "reduction"
    assert cfg.instrument_list == ["sinistro", "fa15"]
    sel = cfg.dataset_selection
    assert (sel.group, sel.file, sel.start_date, sel.end_date, sel.ndays) == (
        "recent", None, None, None, 5.0)
    assert cfg.max_parallel == 3


def test_manager_config_date_and_file_groups(tmp_path):
    cfg = load_manager_config(write(tmp_path, "m.yaml", """\
        log_dir: logs
        data_reduction_dir: red
        dataset_selection: {group: date, start_date: '2024-05-01', end_date: 2024-05-03}
        """))
    assert cfg.dataset_selection.start_date == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert cfg.dataset_selection.end_date == datetime(2024, 5, 3, tzinfo=timezone.utc)
    cfg = load_manager_config(write(tmp_path, "m2.yaml", """\
        log_dir: logs
        data_reduction_dir: red
        dataset_selection: {group: FILE, file: lists/todo.txt}
        """))
    assert cfg.dataset_selection.group == "file"
    assert cfg.dataset_selection.file == tmp_path / "lists" / "todo.txt"


def test_legacy_tom_config_loads_without_any_secret(tmp_path, monkeypatch):
    cfg = load_tom_config(write(tmp_path, "tom_config.yaml", LEGACY_TOM))
    assert (cfg.url, cfg.username, cfg.password_envvar, cfg.token_envvar) == (
        "https://tom.example.org", "rstreet", "TOM_PASSWORD", None)
    assert cfg.auth_kind == "basic"
    monkeypatch.setenv("TOM_PASSWORD", "s3cret-value-42")
    assert cfg.secret() == "s3cret-value-42"          # read at call time
    assert b"s3cret-value-42" not in pickle.dumps(cfg)  # never stored
    monkeypatch.setenv("TOM_PASSWORD", "rotated")
    assert cfg.secret() == "rotated"


def test_tom_secret_unset_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TOM_TOKEN_X", raising=False)
    cfg = load_tom_config(write(tmp_path, "t.yaml", "url: http://127.0.0.1:8000\n"
                                                    "token_envvar: TOM_TOKEN_X\n"))
    assert cfg.auth_kind == "token"
    with pytest.raises(ConfigError, match="TOM_TOKEN_X"):
        cfg.secret()


@pytest.mark.parametrize("name,loader", [
    ("data_download.yaml", load_download_config),
    ("reduction_config.yaml", load_reduction_config),
    ("reduction_manager_config.yaml", load_manager_config),
    ("tom_config.yaml", load_tom_config),
])
def test_shipped_templates_are_commented_and_load_without_warnings(name, loader, caplog):
    path = template_path(name)
    assert path.parent == TEMPLATES
    comments = [ln for ln in path.read_text().splitlines() if "#" in ln]
    assert len(comments) >= 5
    with caplog.at_level(logging.WARNING, logger="pipekit.config"):
        loader(path)
    assert not caplog.records


# ---- relative paths and the time window -------------------------------------------

def test_relative_paths_resolve_against_the_config_folder_not_cwd(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    cfg = load_download_config(write(tmp_path / "a" / "b", "d.yaml", """\
        archives: {lco: {token_envvar: T}}
        log_dir: ../logs
        data_download_dir: ./dl
        data_reduction_dir: ~/red
        """))
    assert cfg.log_dir == tmp_path / "a" / "logs"
    assert cfg.frame_list == tmp_path / "a" / "logs" / "frame_list.txt"
    assert cfg.data_download_dir == tmp_path / "a" / "b" / "dl"
    assert cfg.data_reduction_dir == Path.home() / "red"


def test_window_none_means_the_last_24_hours(tmp_path):
    cfg = load_download_config(write(tmp_path, "d.yaml", """\
        archives: {lco: {}}
        log_dir: logs
        data_download_dir: dl
        data_reduction_dir: red
        start_datetime: none
        end_datetime: None
        """))
    now = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    assert cfg.window(now) == (now - timedelta(hours=24), now)
    start, end = cfg.window()
    assert end.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - end).total_seconds()) < 60
    assert end - start == timedelta(hours=24)


def test_window_with_only_a_start_runs_until_now(tmp_path):
    cfg = load_download_config(write(tmp_path, "d.yaml", """\
        archives: {lco: {}}
        log_dir: logs
        data_download_dir: dl
        data_reduction_dir: red
        start_datetime: '2025-12-31 22:00'
        end_datetime: 'none'
        """))
    now = datetime(2026, 1, 1, 6, 0, tzinfo=timezone.utc)
    assert cfg.window(now) == (datetime(2025, 12, 31, 22, 0, tzinfo=timezone.utc), now)


# ---- errors name the file, the key, the value and what was expected --------------------

MINIMAL_DOWNLOAD = """\
archives: {lco: {token_envvar: T}}
log_dir: logs
data_download_dir: dl
data_reduction_dir: red
"""


@pytest.mark.parametrize("extra,key,value,expected", [
    ("archives: {lco: {proposals: 5}}", "archives.lco.proposals", "5", "a list of strings"),
    ("archives: {lco: {active: maybe}}", "archives.lco.active", "'maybe'", "true or false"),
    ("archives: {lco: {reduction_level: {image: 'high'}}}", "archives.lco.reduction_level.image",
     "'high'", "an integer"),
    ("archives: {lco: {url: 'ftp://x'}}", "archives.lco.url", "'ftp://x'", "http"),
    ("start_datetime: '01/05/2024'", "start_datetime", "'01/05/2024'", "YYYY-MM-DD HH:MM"),
    ("log_dir: [a, b]", "log_dir", "['a', 'b']", "a path"),
    ("archives: [lco]", "archives", "['lco']", "a mapping"),
])
def test_download_config_errors_name_file_key_value_expected(tmp_path, extra, key, value,
                                                              expected):
    import yaml
    data = yaml.safe_load(MINIMAL_DOWNLOAD)
    data.update(yaml.safe_load(extra))
    path = tmp_path / "data_download.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_download_config(path)
    message = str(err.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert value in message
    assert expected in message


def test_missing_required_key_is_named(tmp_path):
    path = write(tmp_path, "data_download.yaml", "archives: {lco: {}}\nlog_dir: logs\n"
                                                 "data_download_dir: dl\n")
    with pytest.raises(ConfigError, match=r"data_download.yaml: required key "
                                          r"'data_reduction_dir' is missing"):
        load_download_config(path)


def test_start_after_end_is_an_error(tmp_path):
    path = write(tmp_path, "d.yaml", MINIMAL_DOWNLOAD + "start_datetime: '2024-05-02 00:00'\n"
                                                        "end_datetime: '2024-05-01 00:00'\n")
    with pytest.raises(ConfigError, match="start_datetime.*not before.*end_datetime"):
        load_download_config(path)


def test_literal_archive_token_is_refused(tmp_path):
    path = write(tmp_path, "d.yaml", MINIMAL_DOWNLOAD.replace("{token_envvar: T}",
                                                              "{token: abc123xyz}"))
    with pytest.raises(ConfigError, match="archives.lco.token_envvar") as err:
        load_download_config(path)
    assert "abc123xyz" not in str(err.value)


@pytest.mark.parametrize("body,key,expected", [
    ("target: {name: X, RA: '25:00:00', Dec: 0}", "target.RA", "right ascension"),
    ("target: {name: X, RA: 10, Dec: '-95:00:00'}", "target.Dec", "declination"),
    ("target: {name: X, Dec: 0}", "target.RA", "required key"),
    ("target: {RA: 1, Dec: 0}", "target.name", "required key"),
    ("photometry: {aperture_arcsec: 'big'}", "photometry.aperture_arcsec", "a number"),
    ("photometry: {aperture_arcsec: 4, annulus_inner_arcsec: 3}",
     "photometry.annulus_inner_arcsec", ">= aperture_arcsec"),
    ("photometry: {annulus_inner_arcsec: 6, annulus_outer_arcsec: 6}",
     "photometry.annulus_outer_arcsec", "> annulus_inner_arcsec"),
    ("photometry: {max_field_stars: 2.5}", "photometry.max_field_stars", "an integer"),
    ("tom: {upload: true}", "tom.config_file", "tom_config.yaml"),
])
def test_reduction_config_errors_name_the_key(tmp_path, body, key, expected):
    text = body if body.startswith("target") else "target: {name: X, RA: 1, Dec: 2}\n" + body
    path = write(tmp_path, "reduction_config.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_reduction_config(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and expected in message


@pytest.mark.parametrize("body,key,expected", [
    ("dataset_selection: {group: some}", "dataset_selection.group", "one of"),
    ("dataset_selection: {group: file}", "dataset_selection.file", "required key"),
    ("dataset_selection: {group: recent}", "dataset_selection.ndays", "required key"),
    ("dataset_selection: {group: date}", "dataset_selection.start_date", "required key"),
    ("dataset_selection: {group: date, start_date: '2024-05-03', end_date: '2024-05-01'}",
     "dataset_selection.end_date", "on or after start_date (2024-05-03)"),
    ("max_parallel: 0", "max_parallel", ">= 1"),
    ("instrument_list: 7", "instrument_list", "a list of strings"),
])
def test_manager_config_errors_name_the_key(tmp_path, body, key, expected):
    path = write(tmp_path, "m.yaml", "log_dir: l\ndata_reduction_dir: r\n" + body)
    with pytest.raises(ConfigError) as err:
        load_manager_config(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and expected in message


@pytest.mark.parametrize("body,match", [
    ("url: http://t\nusername: u\npassword: hunter2\n",
     "'password' holds a secret.*password_envvar"),
    ("url: http://t\ntoken: tok-999\n", "'token' holds a secret.*token_envvar"),
    ("url: http://t\nusername: u\npassword_envvar: A\ntoken_envvar: B\n", "exactly one.*both"),
    ("url: http://t\nusername: u\n", "exactly one.*neither"),
    ("url: http://t\npassword_envvar: A\n", "'username'"),
    ("url: tom.example.org\ntoken_envvar: B\n", "'url'.*http"),
    ("token_envvar: B\n", "required key 'url'"),
])
def test_tom_config_errors_and_literal_secrets(tmp_path, body, match):
    path = write(tmp_path, "tom_config.yaml", body)
    with pytest.raises(ConfigError, match=match) as err:
        load_tom_config(path)
    assert str(path) in str(err.value)
    assert "hunter2" not in str(err.value) and "tok-999" not in str(err.value)


def test_unknown_keys_warn_with_their_dotted_names(tmp_path, caplog):
    path = write(tmp_path, "r.yaml", """\
        target: {name: X, RA: 1, Dec: 2, epoch: 2000}
        photometry: {aperture_arcsec: 3, apertur_arcsec: 4}
        colour: red
        """)
    with caplog.at_level(logging.WARNING, logger="pipekit.config"):
        cfg = load_reduction_config(path)
    text = caplog.text
    assert "'target.epoch'" in text and "'photometry.apertur_arcsec'" in text
    assert "'colour'" in text and str(path) in text
    assert cfg.photometry.extra == {"apertur_arcsec": 4}


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = write(tmp_path, "r.yaml", "target:\n  name: X\n  RA: [1, 2\n")
    with pytest.raises(ConfigError, match=r"r.yaml: not valid YAML at line \d+"):
        load_reduction_config(path)


def test_missing_file_and_non_mapping_top_level(tmp_path):
    with pytest.raises(ConfigError, match="absent.yaml: configuration file not found"):
        load_manager_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top level"):
        load_tom_config(write(tmp_path, "list.yaml", "- a\n- b\n"))


# ---- writing a reduction config from a template ------------------------------------------

def test_write_reduction_config_fills_target_and_keeps_comments(tmp_path):
    path = write_reduction_config(tmp_path / "reduction_config.yaml", "OGLE-2024-BLG-0034",
                                  "17:59:27.050", "-28:36:10.20")
    text = path.read_text()
    template = template_path("reduction_config.yaml").read_text()
    template_comments = [ln.split("#", 1)[1] for ln in template.splitlines() if "#" in ln]
    written_comments = [ln.split("#", 1)[1] for ln in text.splitlines() if "#" in ln]
    assert written_comments == template_comments
    cfg = load_reduction_config(path)
    assert cfg.target.name == "OGLE-2024-BLG-0034"
    assert cfg.target.ra == pytest.approx(269.8627083333, abs=1e-9)
    assert cfg.target.dec == pytest.approx(-28.60283333333, abs=1e-9)
    assert not list(tmp_path.glob(".pipekit-tmp-*"))


def test_write_reduction_config_quotes_awkward_names_and_takes_degrees(tmp_path):
    name = "Gaia24abc: \"odd\" #1 'name'"
    path = write_reduction_config(tmp_path / "r.yaml", name, 266.25, -29.5)
    cfg = load_reduction_config(path)
    assert (cfg.target.name, cfg.target.ra, cfg.target.dec) == (name, 266.25, -29.5)


def test_write_reduction_config_never_overwrites(tmp_path):
    path = tmp_path / "reduction_config.yaml"
    path.write_text("target: {name: EDITED, RA: 1, Dec: 2}\n")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        write_reduction_config(path, "NEW", 10.0, 20.0)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".pipekit-tmp-*"))


def test_write_reduction_config_from_a_legacy_template_keeps_its_settings(tmp_path):
    template = write(tmp_path, "template.yaml", LEGACY_REDUCTION)
    path = write_reduction_config(tmp_path / "new.yaml", "KMT-2024-BLG-0100", 270.0, -27.0,
                                  template=template)
    cfg = load_reduction_config(path)
    assert (cfg.target.name, cfg.target.ra, cfg.target.dec) == ("KMT-2024-BLG-0100", 270.0, -27.0)
    assert cfg.photometry.aperture_arcsec == 2.5
    assert cfg.tom.data_label == "LCO_1m_ip"


def test_write_reduction_config_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="not a right ascension"):
        write_reduction_config(tmp_path / "a.yaml", "X", "99:00:00", 0)
    with pytest.raises(ConfigError, match="not a declination"):
        write_reduction_config(tmp_path / "a.yaml", "X", 10, 100)
    not_a_mapping = write(tmp_path, "t.yaml", "- just\n- a list\n")
    with pytest.raises(ConfigError, match="t.yaml: cannot fill the target"):
        write_reduction_config(tmp_path / "a.yaml", "X", 10, 10, template=not_a_mapping)
    assert not (tmp_path / "a.yaml").exists()


@pytest.mark.parametrize("template_text", [
    "# no target here\nphotometry:\n  aperture_arcsec: 3.5  # mine\n",
    "target:\n  name: OLD\nphotometry: {aperture_arcsec: 3.5}\n",
    "target: {name: OLD, RA: 1, Dec: 2}  # flow style\nphotometry: {aperture_arcsec: 3.5}",
])
def test_write_reduction_config_adds_what_the_template_lacks(tmp_path, template_text):
    template = write(tmp_path, "t.yaml", template_text)
    path = write_reduction_config(tmp_path / "r.yaml", "NEW", "01:00:00", "+10:00:00",
                                  template=template)
    cfg = load_reduction_config(path)
    # astropy's Angle (pipekit.lco.parse_ra) is exact only to a few ulp
    assert (cfg.target.name, cfg.target.ra, cfg.target.dec) == ("NEW", pytest.approx(15.0),
                                                                pytest.approx(10.0))
    assert cfg.photometry.aperture_arcsec == 3.5
    assert template_text.count("#") == path.read_text().count("#")


# ---- "none" means "not set" for every optional key ---------------------------------------

@pytest.mark.parametrize("marker", ["none", "None", "null", "~", "''"])
def test_none_token_envvar_and_proposals_mean_not_set(tmp_path, marker):
    path = write(tmp_path, "d.yaml", MINIMAL_DOWNLOAD.replace(
        "{token_envvar: T}", f"{{token_envvar: {marker}, proposals: {marker}, "
                             f"timeout: {marker}}}"))
    lco = load_download_config(path).archives["lco"]
    assert lco.token_envvar is None  # not a variable named 'none'
    assert lco.proposals == []       # not ['none']
    assert lco.timeout is None


def test_none_marks_every_optional_key_of_every_file_as_default(tmp_path):
    red = load_reduction_config(write(tmp_path, "r.yaml", """\
        target: {name: X, RA: 1, Dec: 2}
        photometry: {aperture_arcsec: none, reference_frame: none}
        tom: {upload: none, config_file: none, data_label: none}
        """))
    assert red.photometry.aperture_arcsec == 3.0 and red.photometry.reference_frame is None
    assert (red.tom.upload, red.tom.config_file, red.tom.data_label) == (False, None, "pipekit")
    tom = load_tom_config(write(tmp_path, "t.yaml", "url: http://t\ntoken_envvar: T\n"
                                                    "username: none\npassword_envvar: none\n"
                                                    "groups: none\n"))
    assert (tom.username, tom.password_envvar, tom.groups) == (None, None, [])
    mgr = load_manager_config(write(tmp_path, "m.yaml", "log_dir: l\ndata_reduction_dir: r\n"
                                                        "instrument_list: none\n"
                                                        "max_parallel: none\n"))
    assert (mgr.instrument_list, mgr.max_parallel) == ([], 4)


def test_none_for_a_required_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "m.yaml", "log_dir: none\ndata_reduction_dir: r\n")
    with pytest.raises(ConfigError, match=r"m.yaml: key 'log_dir' = 'none': expected a path"):
        load_manager_config(path)


def test_a_none_inside_a_list_is_an_error(tmp_path):
    path = write(tmp_path, "d.yaml", MINIMAL_DOWNLOAD.replace(
        "{token_envvar: T}", "{proposals: [KEY-1, none]}"))
    with pytest.raises(ConfigError, match="'archives.lco.proposals'.*a list of strings"):
        load_download_config(path)


# ---- the seed's own example files, verbatim (tests/_seed_files.py) --------------------------

def test_seed_example_download_config_loads_with_its_meaning(tmp_path, caplog):
    from _seed_files import SEED_DATA_DOWNLOAD, write_seed_file

    template = write_seed_file(tmp_path / "default_red_config.yaml", "target: {name: x}\n")
    path = write_seed_file(tmp_path / "conf" / "data_download.yaml", SEED_DATA_DOWNLOAD, [
        ("/path/to/directory/", f"{tmp_path}/"),
        ("/path/to/default/YAMLfile/", template)])
    with caplog.at_level(logging.WARNING, logger="pipekit"):
        cfg = load_download_config(path)
    assert caplog.records == []                       # nothing unknown, nothing ignored
    assert [a.name for a in cfg.active_archives] == ["LCO", "SOAR"]
    assert cfg.archives["LCO"].token_envvar == "LCO_TOKEN"
    assert cfg.archives["LCO"].proposals == ["PROPOSAL_ID"]
    assert cfg.archives["SOAR"].reduction_level_image == 0
    assert cfg.start_datetime is None and cfg.end_datetime is None   # the string 'None'
    assert cfg.frame_list == tmp_path / "omega_frame_list.txt"
    assert cfg.data_download_dir == cfg.data_reduction_dir == tmp_path
    assert cfg.default_red_config == template


def test_seed_example_reduction_config_keeps_reference_image(tmp_path, caplog):
    from _seed_files import SEED_REDUCTION_CONFIG, write_seed_file

    tom = write_seed_file(tmp_path / "tom.yaml", "url: https://tom.example.org\n")
    path = write_seed_file(tmp_path / "reduction_config.yaml", SEED_REDUCTION_CONFIG,
                           [("/path/to/config", tom)])
    with caplog.at_level(logging.WARNING, logger="pipekit"):
        cfg = load_reduction_config(path)
    assert caplog.records == []                       # reference_image is no unknown key
    assert cfg.photometry.reference_frame == "name_of_image.fits"
    assert cfg.photometry.aperture_arcsec == 2.0
    assert cfg.target.name == "TEST"
    assert cfg.target.ra == pytest.approx((17 + 30 / 60 + 25.5 / 3600) * 15)
    assert cfg.target.dec == pytest.approx(-(25 + 30 / 60 + 30.5 / 3600))
    assert (cfg.tom.upload, cfg.tom.config_file, cfg.tom.data_label) == (True, tom, "TEST")


def test_reference_frame_spelling_is_still_accepted(tmp_path):
    path = tmp_path / "reduction_config.yaml"
    path.write_text("target: {name: T, RA: 10.0, Dec: -5.0}\n"
                    "photometry: {reference_frame: a-0001-e91.fits.fz}\n")
    assert load_reduction_config(path).photometry.reference_frame == "a-0001-e91.fits.fz"


def test_seed_example_manager_config_accepts_software_dir_quietly(tmp_path, caplog):
    from _seed_files import SEED_MANAGER_CONFIG, write_seed_file

    listing = write_seed_file(tmp_path / "reduce_datasets.txt", "T/sinistro/ip\n")
    path = write_seed_file(tmp_path / "reduction_manager_config.yaml", SEED_MANAGER_CONFIG, [
        ("/path/to/logging/directory/", tmp_path / "logs"),
        ("/path/to/top-level/reduction/directory/", tmp_path / "red"),
        ("/path/to/software/installation/directory/", tmp_path / "software"),
        ("/path/to/datasets/file/reduce_datasets.txt", listing)], append="max_parallel: 2\n")
    with caplog.at_level(logging.WARNING, logger="pipekit"):
        cfg = load_manager_config(path)
    assert caplog.records == []
    assert cfg.software_dir == tmp_path / "software"   # accepted, unused
    assert cfg.instrument_list == ["sinistro", "qhy"] and cfg.max_parallel == 2
    sel = cfg.dataset_selection
    assert (sel.group, sel.file, sel.start_date, sel.end_date, sel.ndays) == (
        "file", listing, None, None, 0)


def test_seed_example_tom_config_says_how_to_migrate_without_the_password(tmp_path):
    from _seed_files import SEED_TOM_CONFIG, write_seed_file

    path = write_seed_file(tmp_path / "tom_config.yaml", SEED_TOM_CONFIG,
                           [("'tom_password'", "'s3cret-Value'")])
    with pytest.raises(ConfigError) as err:
        load_tom_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "username: 'userid'" in message and "password_envvar:" in message
    assert "url: 'https://url.to.tom'" in message and "export TOM_PASSWORD" in message
    assert "'tom_user_id'" in message and "'tom_password'" in message
    assert "s3cret-Value" not in message and "neither" not in message
