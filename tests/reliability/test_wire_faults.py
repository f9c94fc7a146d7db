"""Faults on the wire: servers that drop connections, stall or answer 500 for a while.

The archive faults come from the local archive server's own switches; the TOM faults
from a fault-injecting proxy (``_fault_proxy.py``) in front of a real TOM Toolkit.
A short outage is ridden out by the retries; a lasting one fails its step clearly
(the URL and the HTTP status or timeout in the message) within a bounded time, leaves
a checkpoint that loads, and ``run(resume=True)`` succeeds once the server is healthy.
"""

import os
import secrets
import time

import pytest

import _chain
from _fault_proxy import FaultProxy
from pipekit.testing.archive_server import ArchiveServer, Faults
from pipekit.errors import PipelineError
from pipekit.pipeline import load
from pipekit.workflows import download_pipeline, reduction_pipeline

ARCHIVE_LIMITS = "    timeout: 1\n    retries: 2\n"


@pytest.fixture(scope="module")
def archive_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wire_archive")
    _chain.simulate_archive(folder, n_frames=6, datasets=_chain.DATASETS[:1])
    return folder


@pytest.fixture
def archive(archive_folder, monkeypatch):
    token = secrets.token_hex(12)
    monkeypatch.setenv(_chain.TOKEN_VAR, token)
    with ArchiveServer(archive_folder, token=token) as server:
        yield server


def _download(root, server):
    root.mkdir()
    _chain.write_download_config(root, server.url, extra_archive=ARCHIVE_LIMITS)
    return download_pipeline(root / "data_download.yaml")


def _frames(root):
    return sorted(p.name for p in (root / "reduction").glob("*/*/*/*.fits*"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("faults", [
    Faults(http_5xx=2), Faults(drop=2), Faults(drop=2, target="download"),
    Faults(stall=2, stall_seconds=4, target="download"), Faults(slow=2, delay=3, target="api"),
], ids=["500-api-and-download", "drop", "drop-download", "stall-download", "stall-api"])
def test_archive_outage_shorter_than_the_retries_is_ridden_out(archive, tmp_path, faults):
    archive.faults = faults
    pipe = _download(tmp_path / "work", archive)
    t0 = time.monotonic()
    pipe.run()
    assert pipe.status == "success"
    assert len(_frames(tmp_path / "work")) == 6
    assert sum(v for k, v in archive.stats.items() if k.startswith("fault_")) >= 2
    assert pipe.step("download").result["n_failed"] == 0
    assert time.monotonic() - t0 < 30


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["http_5xx", "drop", "slow"])
def test_archive_down_for_good_fails_download_clearly_then_resumes(archive, tmp_path, kind):
    archive.faults = Faults(**{kind: 10 ** 6}, delay=3.0)
    root = tmp_path / "work"
    pipe = _download(root, archive)
    t0 = time.monotonic()
    with pytest.raises(PipelineError) as err:
        pipe.run()
    elapsed = time.monotonic() - t0
    assert elapsed < 30, f"gave up only after {elapsed:.0f} s"
    message = str(err.value)
    assert "download" in message and "127.0.0.1" in message, message
    assert {"http_5xx": "HTTP 5", "drop": "onnection", "slow": "imed out"}[kind].lower() \
        in message.lower().replace("timeout", "timed out"), message
    token = os.environ[_chain.TOKEN_VAR].encode()
    assert not [p for p in root.rglob("*") if p.is_file() and token in p.read_bytes()]
    saved = load(root / "logs" / "pipeline.p")
    assert saved.status == "error" and saved.failed_step == "download"
    assert saved.step("sort").status == "not run"
    assert not _frames(root)

    archive.faults = Faults()
    saved.run(resume=True)
    assert saved.status == "success"
    assert len(_frames(root)) == 6
    assert load(root / "logs" / "pipeline.p").status == "success"


# ---- TOM behind a fault-injecting proxy ---------------------------------------

TOM_TARGET = "PK-WIRE"
PASSWORD_VAR = "PIPEKIT_WIRE_TOM_PASSWORD"


@pytest.fixture(scope="module")
def tom_dataset(tom_server, tmp_path_factory):
    """One reduced dataset (photometry and light curve done) whose upload goes to a proxy."""
    import requests
    r = requests.post(f"{tom_server.url}/api/targets/",
                      headers={"Authorization": f"Token {tom_server.token}"},
                      json={"name": TOM_TARGET, "type": "SIDEREAL", "ra": _chain.RA,
                            "dec": _chain.DEC, "epoch": 2000}, timeout=30)
    assert r.status_code in (200, 201), r.text[:300]
    base = tmp_path_factory.mktemp("wire_tom")
    _chain.simulate_archive(base / "archive", n_frames=8, datasets=_chain.DATASETS[:1],
                            target=TOM_TARGET)
    token = secrets.token_hex(8)
    root = base / "work"
    root.mkdir()
    template = root / "red_template.yaml"
    template.write_text(
        "target: {name: TARGET, RA: '00:00:00', Dec: '+00:00:00'}\n"
        f"tom: {{upload: true, config_file: {root / 'tom_config.yaml'}, data_label: wire}}\n")
    old = os.environ.get(_chain.TOKEN_VAR)
    os.environ[_chain.TOKEN_VAR] = token
    try:
        with ArchiveServer(base / "archive", token=token) as server:
            _chain.write_download_config(root, server.url, template=template)
            download_pipeline(root / "data_download.yaml").run()
    finally:
        if old is None:
            del os.environ[_chain.TOKEN_VAR]
        else:
            os.environ[_chain.TOKEN_VAR] = old
    red_dir = next((root / "reduction").glob("*/*/*"))
    reduction_pipeline(red_dir).run(run_tags=["photometry", "lightcurve"])
    with FaultProxy(tom_server.url, stall_seconds=4.0) as proxy:
        (root / "tom_config.yaml").write_text(
            f"url: {proxy.url}\nusername: {tom_server.username}\n"
            f"password_envvar: {PASSWORD_VAR}\ntimeout: 1.5\n")
        yield red_dir, proxy


@pytest.mark.tom
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["500", "drop", "stall"])
def test_tom_outage_shorter_than_the_retries_is_ridden_out(tom_dataset, tom_server, kind,
                                                           monkeypatch):
    red_dir, proxy = tom_dataset
    monkeypatch.setenv(PASSWORD_VAR, tom_server.password)
    before = proxy.faulted
    proxy.inject(kind, 2)
    pipe = reduction_pipeline(red_dir)
    t0 = time.monotonic()
    pipe.run(run_tags=["upload"])
    assert pipe.status == "success", pipe
    assert proxy.faulted - before == 2 and proxy.left == 0
    result = pipe.step("upload").result
    assert result["skipped"] is False and result["points"] >= 6
    assert time.monotonic() - t0 < 60


@pytest.mark.tom
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["500", "drop", "stall"])
def test_tom_down_for_good_fails_upload_clearly_then_resumes(tom_dataset, tom_server, kind,
                                                             monkeypatch):
    red_dir, proxy = tom_dataset
    monkeypatch.setenv(PASSWORD_VAR, tom_server.password)
    proxy.inject(kind, None)
    pipe = reduction_pipeline(red_dir)
    t0 = time.monotonic()
    try:
        with pytest.raises(PipelineError) as err:
            pipe.run()
    finally:
        proxy.inject(None)
    elapsed = time.monotonic() - t0
    assert elapsed < 90, f"gave up only after {elapsed:.0f} s"
    message = str(err.value)
    assert "upload" in message and proxy.url in message, message
    assert {"500": "HTTP 500", "drop": "onnection", "stall": "imeout"}[kind] in message, message
    assert tom_server.password not in message
    for path in (red_dir / "logs").iterdir():  # the failure's traceback is kept, not the secret
        assert tom_server.password.encode() not in path.read_bytes(), path
    saved = load(red_dir / "logs" / "pipeline.p")
    assert saved.status == "error" and saved.failed_step == "upload"
    assert saved.step("photometry").status == "success"

    saved.run(resume=True)
    assert saved.status == "success"
    assert saved.step("upload").result["points"] >= 6
    assert saved.step("photometry").result["n_measured"] == 0  # nothing measured again
