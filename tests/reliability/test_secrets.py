"""Secrets stay secret: a full run with an archive token and a TOM password leaves neither.

Download from a local archive server that requires a random token, reduce, upload to
a real TOM Toolkit (password auth, random password), then read every byte pipekit
left under the work folder (logs, checkpoints, locks, frame lists, configs, light
curves, pickles) and everything the commands printed: neither secret appears.
"""

import secrets
import subprocess
import sys

import pytest
import requests

import _chain
from pipekit.testing.archive_server import ArchiveServer

TARGET = "PK-RELIABILITY"
PASSWORD_VAR = "PIPEKIT_RELIABILITY_TOM_PASSWORD"


def _create_target(tom):
    r = requests.post(f"{tom.url}/api/targets/", headers={"Authorization": f"Token {tom.token}"},
                      json={"name": TARGET, "type": "SIDEREAL", "ra": _chain.RA,
                            "dec": _chain.DEC, "epoch": 2000}, timeout=30)
    assert r.status_code in (200, 201), r.text[:500]


def _pipekit(args, cwd, env):
    done = subprocess.run([sys.executable, "-m", "pipekit.cli", "-v", *args], cwd=cwd, env=env,
                          capture_output=True, timeout=240)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.tom
@pytest.mark.timeout(400)
def test_archive_token_and_tom_password_appear_in_no_file_or_output(tom_server, tmp_path):
    _create_target(tom_server)
    archive = tmp_path / "archive"
    _chain.simulate_archive(archive, n_frames=8, target=TARGET)
    token = "tok" + secrets.token_hex(16)
    root = tmp_path / "work"
    root.mkdir()
    (root / "tom_config.yaml").write_text(
        f"url: {tom_server.url}\nusername: {tom_server.username}\n"
        f"password_envvar: {PASSWORD_VAR}\ntimeout: 30\n")
    template = root / "red_template.yaml"
    template.write_text(
        "target: {name: TARGET, RA: '00:00:00', Dec: '+00:00:00'}\n"
        f"tom: {{upload: true, config_file: {root / 'tom_config.yaml'}, data_label: secrets}}\n")
    env = _chain.chain_env(**{_chain.TOKEN_VAR: token, PASSWORD_VAR: tom_server.password})

    with ArchiveServer(archive, token=token) as server:
        _chain.write_download_config(root, server.url, template=template)
        code, out_download = _pipekit(["download", "data_download.yaml"], root, env)
        assert code == 0, out_download.decode(errors="replace")[-3000:]
        assert server.stats["downloads_served"] == 16
    _chain.write_manager_config(root, max_parallel=2)
    code, out_manage = _pipekit(["manage", "reduction_manager_config.yaml", "--no-progress"],
                                root, env)
    assert code == 0, out_manage.decode(errors="replace")[-3000:]
    red_dirs = sorted(p.parent for p in (root / "reduction").glob("*/*/*/reduction_config.yaml"))
    assert len(red_dirs) == 2
    outputs = [out_download, out_manage]
    for red_dir in red_dirs:
        code, out = _pipekit(["status", str(red_dir)], root, env)
        assert code == 0, out
        outputs.append(out)

    # The upload really happened, with the password: the TOM holds both light curves.
    from pipekit.pipeline import load
    for red_dir in red_dirs:
        upload = load(red_dir / "logs" / "pipeline.p").step("upload").result
        assert upload["status"] == "success" and upload["skipped"] is False
        assert upload["points"] >= 6

    # Every byte pipekit left, plus what it printed: neither secret.
    files = [p for p in root.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".p", ".log", ".txt", ".yaml", ".ecsv", ".csv", ".fz"} <= kinds, kinds
    for secret in (token, tom_server.password):
        needle = secret.encode()
        leaked = [str(p) for p in files if needle in p.read_bytes()]
        assert not leaked, f"a secret appears in {leaked}"
        assert not [o for o in outputs if needle in o], "a secret appears in the output"
