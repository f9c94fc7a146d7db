"""A real TOM Toolkit server for the tests, as a session-scoped pytest fixture.

``tom_server`` migrates a fresh SQLite database, creates a user (password and
API token) and targets, starts ``manage.py runserver`` on a free 127.0.0.1
port, and stops it when the session ends. It needs ``$PIPEKIT_TOM_PYTHON``:
the python of a venv made by ``bash tests/tom_server/setup.sh VENV_DIR``.
Without it the tests skip, except under CI (``$CI`` set), where they fail.
"""

import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
USERNAME = "pipekit-observer"
GROUP = "pipekit-team"

#: Targets created in the TOM; each test uses its own so they stay independent.
TARGETS = [
    {"name": "PK-ROUNDTRIP", "ra": 268.61, "dec": -29.75},
    {"name": "PK-REPLACE", "ra": 268.62, "dec": -29.76},
    {"name": "PK-LABELS", "ra": 268.63, "dec": -29.77},
    {"name": "PK-REJECT", "ra": 268.64, "dec": -29.78},
    {"name": "PK-AUTH", "ra": 268.65, "dec": -29.79},
    {"name": "PK-SECRET", "ra": 268.66, "dec": -29.80},
    {"name": "PK-STEP", "ra": 268.67, "dec": -29.81},
    {"name": "OGLE-2024-BLG-0001", "ra": 268.68, "dec": -29.82, "aliases": ["KMT-2024-BLG-0100"]},
]

START_TIMEOUT = 90.0


@dataclass
class TOMServer:
    """What a test needs to talk to the running TOM."""

    url: str
    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)
    targets: dict
    log_path: Path
    run_dir: Path

    def log_tail(self, lines=40):
        """The last lines of the server's log (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _tom_python():
    python = os.environ.get("PIPEKIT_TOM_PYTHON", "").strip()
    if not python:
        reason = ("PIPEKIT_TOM_PYTHON is not set: run `bash tests/tom_server/setup.sh .venv-tom` "
                  "and export PIPEKIT_TOM_PYTHON=$PWD/.venv-tom/bin/python to test against a "
                  "real TOM Toolkit")
        if _in_ci():
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    if not Path(python).is_file():
        pytest.fail(f"PIPEKIT_TOM_PYTHON={python} does not exist (run tests/tom_server/setup.sh)",
                    pytrace=False)
    return python


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(run_dir):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")}
    env.update(PIPEKIT_TOM_RUN_DIR=str(run_dir), DJANGO_SETTINGS_MODULE="tomproject.settings",
               MPLCONFIGDIR=str(run_dir / "mpl"), PYTHONDONTWRITEBYTECODE="1",
               ASTROPY_IERS_AUTO_DOWNLOAD="0")
    return env


def _manage(python, args, env, log_path, extra_env=None, timeout=300):
    with open(log_path, "a") as log:
        log.write(f"\n$ manage.py {' '.join(args)}\n")
        log.flush()
        done = subprocess.run([python, *args], cwd=HERE, env={**env, **(extra_env or {})},
                              stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"TOM setup step {' '.join(args)} failed (exit {done.returncode}):\n{tail}",
                    pytrace=False)
    return done.stdout


def _wait_until_up(proc, url, token, server):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the TOM server exited with {proc.returncode}:\n{server.log_tail()}",
                        pytrace=False)
        try:
            r = requests.get(f"{url}/api/targets/", headers={"Authorization": f"Token {token}"},
                             timeout=2)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"the TOM server at {url} did not answer within {START_TIMEOUT:.0f} s:\n"
                f"{server.log_tail()}", pytrace=False)


@pytest.fixture(scope="session")
def tom_server(tmp_path_factory):
    """A running TOM Toolkit on 127.0.0.1 with a user, token and `TARGETS`.

    Yields
    ------
    TOMServer
    """
    python = _tom_python()
    run_dir = tmp_path_factory.mktemp("tom_server")
    log_path = run_dir / "server.log"
    env = _server_env(run_dir)
    password = secrets.token_urlsafe(18)

    _manage(python, ["manage.py", "migrate", "--noinput"], env, log_path)
    # TOM Toolkit's own setup notes say a fresh project needs migrate run twice.
    _manage(python, ["manage.py", "migrate", "--noinput"], env, log_path)
    targets_file = run_dir / "targets.json"
    targets_file.write_text(json.dumps(TARGETS))
    out = _manage(python, ["bootstrap.py", str(targets_file)], env, log_path,
                  extra_env={"PIPEKIT_TOM_USER": USERNAME, "PIPEKIT_TOM_PASSWORD": password,
                             "PIPEKIT_TOM_GROUP": GROUP})
    made = json.loads(out.strip().splitlines()[-1])

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = TOMServer(url=url, username=USERNAME, password=password, token=made["token"],
                       targets=made["targets"], log_path=log_path, run_dir=run_dir)
    with open(log_path, "a") as log:
        proc = subprocess.Popen([python, "manage.py", "runserver", f"127.0.0.1:{port}",
                                 "--noreload"], cwd=HERE, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(proc, url, made["token"], server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
