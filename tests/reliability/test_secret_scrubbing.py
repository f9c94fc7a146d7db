"""Servers that echo credentials back: no secret, nor any 8-character piece of one, survives.

Real loopback servers answer an HTML login page (HTTP 200), a 400 echoing the request
headers (``Authorization: Basic ...`` / ``Token ...``), and a JSON without ``results``
echoing the token. The failing step runs in a real pipeline with a log folder; then
every byte written (checkpoint, pipeline.log, a ``pipekit.manager`` log file), what
reached the terminal, and what ``pipekit status`` prints are searched for the token,
the password, the Basic header's base64 and every 8-character piece of them.
"""

import base64
import functools
import http.server
import io
import json
import logging
import os
import secrets
import subprocess
import sys

import pytest

from _loopback import LoopbackServer
from pipekit.archive import LCOArchive
from pipekit.config import load_reduction_config
from pipekit.errors import ConfigError, PipelineError
from pipekit.pipeline import Pipeline, load
from pipekit.secrets import register_envvar
from pipekit.tom import TOMClient

TOKEN_VAR, PASSWORD_VAR = "PK_SCRUB_A", "PK_SCRUB_B"  # names that do not look secret
USER = "observer"


class EchoServer(LoopbackServer):
    """Answers every request the way ``mode`` says, echoing the request's headers."""

    def __init__(self, mode):
        self.mode = mode
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                echoed = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
                auth = self.headers.get("Authorization", "")
                if server.mode == "login":
                    body = (f"<html><head><title>Log in ({auth})</title></head><body>"
                            f"<h1>Sign in again: you sent {auth}</h1><pre>{echoed}</pre>"
                            "</body></html>").encode()
                    code, kind = 200, "text/html"
                elif server.mode == "echo400":
                    body, code, kind = f"Bad request\n{echoed}".encode(), 400, "text/plain"
                else:
                    body = json.dumps({"detail": f"you sent {auth}",
                                       "headers": dict(self.headers.items())}).encode()
                    code, kind = 200, "application/json"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


@pytest.fixture
def secret_env(monkeypatch):
    token = "tk" + secrets.token_hex(20)
    password = "pw-" + secrets.token_urlsafe(18)
    monkeypatch.setenv(TOKEN_VAR, token)
    monkeypatch.setenv(PASSWORD_VAR, password)
    basic = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return {"token": token, "password": password, "basic": basic}


def _needles(found):
    needles = set()
    for value in found.values():
        needles.add(value)
        needles.update(value[i:i + 8] for i in range(len(value) - 7))
    return sorted(needles)


def _leaks(blob, found):
    if isinstance(blob, bytes):
        blob = blob.decode("utf-8", errors="replace")
    return [n for n in _needles(found) if n in blob]


def _run_failing(tmp_path, func, **kwargs):
    """Run ``func`` as the one step of a pipeline; return the terminal's text."""
    red_dir = tmp_path / "dataset"
    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    manager_log = logging.FileHandler(tmp_path / "manager.log", encoding="utf-8")
    root = logging.getLogger("pipekit")
    root.addHandler(handler)
    root.addHandler(manager_log)
    try:
        pipe = Pipeline(paths={"log": red_dir / "logs"}, name="leaky")
        pipe.add_step(functools.partial(func, **kwargs), name="talk")
        with pytest.raises(PipelineError) as caught:
            pipe.run()
        logging.getLogger("pipekit.manager").error("pipeline leaky failed: %s", caught.value)
        logging.getLogger("pipekit.manager").exception("with its traceback",
                                                       exc_info=caught.value)
        terminal.write(f"{caught.value}\n")
    finally:
        root.removeHandler(handler)
        root.removeHandler(manager_log)
        manager_log.close()
    return red_dir, terminal.getvalue()


def _assert_nothing_leaked(tmp_path, red_dir, terminal, found, expect_in_log):
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert red_dir / "logs" / "pipeline.p" in files and red_dir / "logs" / "pipeline.log" in files
    for path in files:
        assert not _leaks(path.read_bytes(), found), f"a secret (or piece) in {path}"
    assert not _leaks(terminal, found), "a secret (or piece) reached the terminal"
    status = subprocess.run([sys.executable, "-m", "pipekit.cli", "status", str(red_dir)],
                            capture_output=True, timeout=120, env=dict(os.environ))
    assert status.returncode == 1
    assert not _leaks(status.stdout + status.stderr, found), "pipekit status shows a secret"
    # The failure is still explained: the real cause is there, the secret is not.
    assert expect_in_log in (tmp_path / "manager.log").read_text()
    assert expect_in_log in load(red_dir / "logs" / "pipeline.p").step("talk").error
    assert "***" in (red_dir / "logs" / "pipeline.p").read_bytes().decode("latin-1")
    assert load(red_dir / "logs" / "pipeline.p").step("talk").status == "error"


def test_tom_login_page_with_basic_auth_leaks_neither_password_nor_base64(tmp_path, secret_env):
    with EchoServer("login") as server:
        client = TOMClient(server.url, username=USER, password_envvar=PASSWORD_VAR, retries=0)
        red_dir, terminal = _run_failing(tmp_path, client.find_target, name="T1")
    found = {k: secret_env[k] for k in ("password", "basic")}
    _assert_nothing_leaked(tmp_path, red_dir, terminal, found, "expected JSON")


def test_tom_400_echoing_the_token_header_leaks_no_piece_of_it(tmp_path, secret_env):
    with EchoServer("echo400") as server:
        client = TOMClient(server.url, token_envvar=TOKEN_VAR, retries=0)
        red_dir, terminal = _run_failing(tmp_path, client.find_target, name="T1")
    _assert_nothing_leaked(tmp_path, red_dir, terminal, {"token": secret_env["token"]},
                           "HTTP 400")


def test_tom_400_echoing_the_basic_header_leaks_no_piece_of_it(tmp_path, secret_env):
    with EchoServer("echo400") as server:
        client = TOMClient(server.url, username=USER, password_envvar=PASSWORD_VAR, retries=0)
        red_dir, terminal = _run_failing(tmp_path, client.find_target, name="T1")
    found = {k: secret_env[k] for k in ("password", "basic")}
    _assert_nothing_leaked(tmp_path, red_dir, terminal, found, "HTTP 400")


def test_archive_json_without_results_echoing_the_token_leaks_no_piece_of_it(
        tmp_path, secret_env):
    with EchoServer("noresults") as server:
        archive = LCOArchive(server.url, token_envvar=TOKEN_VAR, retries=0)
        red_dir, terminal = _run_failing(tmp_path, archive.query, proposal_id="P1",
                                         start="2024-05-01", end="2024-05-02")
    _assert_nothing_leaked(tmp_path, red_dir, terminal, {"token": secret_env["token"]},
                           "'results' list")


def test_a_step_result_holding_a_secret_is_scrubbed_before_the_checkpoint(tmp_path, secret_env,
                                                                       monkeypatch):
    register_envvar(TOKEN_VAR)  # what LCOArchive(token_envvar=...) does
    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="results")
    pipe.add_step(os.getenv, name="echo", key=TOKEN_VAR)  # returns the token itself
    pipe.run()
    blob = (tmp_path / "logs" / "pipeline.p").read_bytes()
    assert not _leaks(blob, {"token": secret_env["token"]})
    assert pipe.step("echo").result == "***"


@pytest.mark.parametrize("key", ["password", "tom_password", "token", "api_key", "secret"])
def test_a_literal_secret_in_a_reduction_config_is_refused_without_echoing_it(tmp_path, key):
    value = "hunter2-" + secrets.token_hex(6)
    path = tmp_path / "reduction_config.yaml"
    path.write_text(f"target: {{name: T1, RA: '10:00:00', Dec: '+10:00:00'}}\n"
                    f"tom:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_reduction_config(path)
    assert key in str(caught.value) and "environment" in str(caught.value)
    assert not _leaks(str(caught.value), {"v": value})
