"""Tests of pipekit.report, pipekit.combined and pipekit.quality: the page, its files, a browser."""

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from astropy.table import Table

from pipekit.cli import main
from pipekit.config import write_reduction_config
from pipekit.lco import slug
from pipekit.report import REPORT_DIR, REPORT_HTML, refresh_report, write_report
from pipekit.testing.simulate import simulate_dataset
from pipekit.workflows import reduction_pipeline

#: A target name as an archive may hand it over: HTML characters included.
NASTY = "<b>T&1</b>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Links(HTMLParser):
    """Every href and src of a page, and its visible text."""

    def __init__(self):
        super().__init__()
        self.refs, self.text, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("href", "src")]

    def handle_data(self, data):
        self.text.append(data)


def _parse(path):
    p = _Links()
    p.feed(Path(path).read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def reduction(tmp_path_factory):
    """Two datasets of a target named with HTML characters, one failing dataset."""
    root = tmp_path_factory.mktemp("report") / "reduction"
    folder = root / slug(NASTY)
    truths = {}
    for cls, instrument, seed, zp in (("sinistro", "fa15", 21, 23.5), ("qhy", "sq34", 22, None)):
        red = folder / cls / "ip"
        truth = simulate_dataset(red, n_frames=10, seed=seed, shape=(256, 256), n_stars=60,
                                 instrument=instrument, target=NASTY, zeropoint=zp,
                                 failed_zeropoints=(2,))
        write_reduction_config(red / "reduction_config.yaml", NASTY, truth.meta["ra"],
                               truth.meta["dec"])
        reduction_pipeline(red).run()
        truths[cls] = truth
    empty = root / "Empty" / "sinistro" / "ip"
    empty.mkdir(parents=True)
    write_reduction_config(empty / "reduction_config.yaml", "Empty", 10.0, -5.0)
    reduction_pipeline(empty).run(ignore_errors=True, ignore_exceptions=True)
    return root, write_report(root), truths


def test_the_page_is_written_atomically_at_the_top_of_the_reduction_folder(reduction):
    root, page, _ = reduction
    assert page == root / REPORT_HTML and page.is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".pipekit-tmp")]


def test_every_link_and_image_is_relative_and_resolves_to_a_file(reduction):
    root, page, _ = reduction
    parsed = _parse(page)
    refs = [r for r in parsed.refs if not r.startswith("#")]
    assert len(refs) >= 10
    for ref in refs:
        url = urlparse(ref)
        assert not url.scheme and not url.netloc and not ref.startswith("/"), ref
        assert (root / unquote(url.path)).is_file(), ref
    anchors = {r[1:] for r in parsed.refs if r.startswith("#")}
    text = page.read_text()
    assert all(f"id='{a}'" in text for a in anchors)


def test_no_absolute_path_leaks_into_the_page_or_the_combined_table(reduction):
    root, page, _ = reduction
    text = page.read_text()
    assert str(root) not in text and str(root.parent) not in text
    for f in (root / REPORT_DIR).iterdir():
        if f.suffix in (".ecsv", ".csv"):
            assert str(root) not in f.read_text()


def test_a_target_name_with_html_characters_is_escaped(reduction):
    root, page, _ = reduction
    text = page.read_text()
    assert NASTY not in text and "<b>" not in text
    assert "&lt;b&gt;T&amp;1&lt;/b&gt;" in text
    assert NASTY in "".join(_parse(page).text)      # shown as the name it is


def test_one_row_per_dataset_with_status_points_rejections_and_errors(reduction):
    root, page, truths = reduction
    text = page.read_text()
    for rel in (f"{slug(NASTY)}/sinistro/ip", f"{slug(NASTY)}/qhy/ip", "Empty/sinistro/ip"):
        assert f"<td>{rel}</td>" in text
    assert text.count("<span class='success'>success</span>") == 2
    assert "<span class='error'>error</span>" in text
    assert "photometry:" in text          # the failed step and the last line of its error
    assert "banzai: zp" in text and "instrumental" in text
    assert "2026-08-01" in text           # last frame time (UTC)


def test_each_dataset_has_its_quality_figure_beside_its_light_curve(reduction):
    root, _, _ = reduction
    for red in (root / slug(NASTY)).glob("*/ip"):
        for name in ("lightcurve.png", "quality.png"):
            data = (red / name).read_bytes()
            assert data[:8] == PNG_MAGIC and len(data) > 20000


def test_the_combined_table_holds_both_instruments_with_their_magnitude_systems(reduction):
    root, _, truths = reduction
    ecsv = list((root / REPORT_DIR).glob("*.ecsv"))
    combined = [Table.read(p, format="ascii.ecsv") for p in ecsv]
    table = next(t for t in combined if t.meta["target"] == NASTY)
    assert set(table["dataset"]) == {"sinistro ip", "qhy ip"}
    systems = dict(zip(table["dataset"], table["magnitude_system"]))
    assert systems == {"sinistro ip": "calibrated (banzai)", "qhy ip": "instrumental"}
    assert np.all(np.diff(table["time"]) >= 0)
    assert np.all(np.isnan(table["zp_err"][table["dataset"] == "qhy ip"]))
    assert np.all(table["zp_err"][table["dataset"] == "sinistro ip"] > 0)
    png = (root / REPORT_DIR / f"{slug(NASTY)}.png").read_bytes()
    assert png[:8] == PNG_MAGIC


def test_cli_report_prints_the_page(reduction, capsys):
    root, _, _ = reduction
    assert main(["report", str(root)]) == 0
    assert f"report: {root / REPORT_HTML}" in capsys.readouterr().out
    assert main(["report", str(root / "nowhere")]) == 2


def test_a_report_that_cannot_be_written_is_a_warning_naming_the_cause(tmp_path, caplog):
    root = tmp_path / "reduction"
    (root / REPORT_HTML).mkdir(parents=True)        # a folder where the page should go
    with caplog.at_level("WARNING", logger="pipekit.report"):
        assert refresh_report(root) is None
    assert "report of" in caplog.text and "not written" in caplog.text
    assert "IsADirectoryError" in caplog.text or "Error" in caplog.text


def test_manage_writes_the_report_and_a_report_failure_does_not_sink_it(tmp_path, capsys,
                                                                        caplog):
    (tmp_path / "reduction").mkdir()
    config = tmp_path / "reduction_manager_config.yaml"
    config.write_text("log_dir: logs\ndata_reduction_dir: reduction\n")
    assert main(["manage", str(config), "--no-progress"]) == 0
    assert (tmp_path / "reduction" / REPORT_HTML).is_file()
    assert "report:" in capsys.readouterr().out
    (tmp_path / "reduction" / REPORT_HTML).unlink()
    (tmp_path / "reduction" / REPORT_HTML).mkdir()
    with caplog.at_level("WARNING", logger="pipekit.report"):
        assert main(["manage", str(config), "--no-progress"]) == 0
    assert "not written" in caplog.text


# ---- in a real browser ------------------------------------------------------------------

def _in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium; skipped when absent, except under CI (then a failure)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = ("chromium not found: `apt-get install -y chromium` (.ci/run installs it) to "
                  "render the report page in a real browser")
        if _in_ci():
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return found


def _headless(chromium, *args, cwd):
    cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
           f"--user-data-dir={cwd / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.browser
def test_the_page_renders_in_a_headless_browser(reduction, chromium, tmp_path):
    from PIL import Image

    root, page, _ = reduction
    shot = tmp_path / "page.png"
    proc = _headless(chromium, f"--screenshot={shot}", "--window-size=1280,2400",
                     page.resolve().as_uri(), cwd=tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), float)
    # not blank: text, tables and plots make many grey levels and a real spread
    assert img.std() > 20 and len(np.unique(img)) > 50
    # the plots were drawn: a plot's axes and points leave rows that are mostly not white
    dark_rows = (img < 200).mean(axis=1) > 0.05
    assert dark_rows.sum() > 100
    dom = _headless(chromium, "--dump-dom", page.resolve().as_uri(), cwd=tmp_path).stdout
    assert "&lt;b&gt;T&amp;1&lt;/b&gt;" in dom      # the name as text ...
    assert "<b>T&amp;1</b>" not in dom               # ... never as markup


def test_the_reports_own_folder_is_no_dataset_and_no_target_folder(reduction):
    from pipekit.datasets import list_datasets
    root, _, _ = reduction
    assert REPORT_DIR.startswith("_") and slug(REPORT_DIR) != REPORT_DIR
    assert not any(REPORT_DIR in d.parts for d in list_datasets(root))


def test_calibration_cache_lives_outside_the_photometry_folder(reduction):
    root, _, _ = reduction
    red = root / slug(NASTY) / "sinistro" / "ip"
    assert (red / "calibration" / "frames.json").is_file()
    assert sorted(p.name for p in (red / "photometry").glob("*.json")) == \
        ["rejected_frames.json", "rejected_frames_stamps.json"]   # the photometry step's own
