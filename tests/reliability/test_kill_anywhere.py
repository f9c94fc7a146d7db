"""Kill anywhere, lose nothing: the whole chain SIGKILLed at 20 seeded instants.

The chain (download from a local archive server -> sort -> configure -> photometry ->
light curve) runs in a subprocess (``_chain_runner.py``) that resumes every pipeline
from its checkpoint; the test kills it at random instants, checks what a kill leaves
behind, resumes, and compares the final light curves with an uninterrupted run's.
"""

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import _chain
from pipekit.testing.archive_server import ArchiveServer
from pipekit.atomic import TMP_PREFIX

HERE = Path(__file__).resolve().parent
N_KILLS = 20
SEED = 20261122


def _saved_frames(root):
    """File names of frames saved under their final names (downloads or datasets)."""
    names = set()
    for folder in [root / "downloads", *(root / "reduction").glob("*/*/*")]:
        if folder.is_dir():
            names |= {p.name for p in folder.iterdir()
                      if p.name.endswith((".fits", ".fits.fz")) and not p.name.startswith(TMP_PREFIX)}
    return names


def _photometry_files(root):
    """{per-frame photometry file: (inode, mtime_ns)} of every dataset."""
    out = {}
    for path in (root / "reduction").glob("*/*/*/photometry/*.ecsv"):
        if path.name.startswith(TMP_PREFIX):
            continue
        st = path.stat()
        out[path] = (st.st_ino, st.st_mtime_ns)
    return out


def _assert_each_frame_saved_once(write_log, n_frames, where):
    """Per-frame photometry saved exactly once, from the shim's begin/end log.

    A write with an ``end`` line landed. A write killed after its ``begin`` may or
    may not have landed (the kill can fall between the rename and the ``end``
    line); if it landed, the resumed run must not measure the frame again, so
    it is then the frame's last write. So, per frame: at most one ``end``, no
    write begun after an ``end``, and a frame with no ``end`` was last written
    by a killed write (its file exists: checked by the caller's file checks).
    """
    events = {}
    for line in write_log.read_text().splitlines():
        event, _pid, path = line.split(" ", 2)
        name = Path(path).name
        if name in ("reference_stars.ecsv", "rejected_frames.json", "rejected_frames_stamps.json"):
            continue
        events.setdefault(name, []).append(event)
    assert len(events) == n_frames, f"{where}: {len(events)} frames measured, expected {n_frames}"
    for name, seq in events.items():
        ends = seq.count("end")
        assert ends <= 1, f"{where}: {name} saved {ends} times"
        if ends:
            assert seq[-1] == "end", f"{where}: {name} measured again after it was saved: {seq}"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chain_killed_at_20_random_instants_resumes_to_the_uninterrupted_light_curves(tmp_path):
    archive = tmp_path / "archive"
    truths = _chain.simulate_archive(archive, n_frames=12, shape=(256, 256))
    n_frames = sum(len(t.files) for t in truths)
    token = secrets.token_hex(12)
    env = _chain.chain_env(**{_chain.TOKEN_VAR: token})
    rng = np.random.default_rng(SEED)

    with ArchiveServer(archive, token=token) as server:
        # The uninterrupted run: the reference light curves and the run time.
        ref = tmp_path / "reference"
        ref.mkdir()
        _chain.write_download_config(ref, server.url)
        t0 = time.monotonic()
        assert _chain.run_chain(ref, env, log=ref / "run.log") == 0, \
            (ref / "run.log").read_text()[-3000:]
        full_seconds = time.monotonic() - t0
        reference = {k: _chain.lc_columns(p) for k, p in _chain.light_curves(ref).items()}
        assert len(reference) == 2
        assert all(len(cols["flux"]) >= 10 for cols in reference.values())

        kills, trials, kill_log, kills_holding_a_lock = 0, 0, [], 0
        while kills < N_KILLS:
            trials += 1
            root = tmp_path / f"trial{trials}"
            root.mkdir()
            _chain.write_download_config(root, server.url)
            # Odd trials resume with `pipekit resume`, even ones with load(...).run(resume=True);
            # every per-frame photometry write of every run is logged.
            write_log = root / "photometry_writes.log"
            env = _chain.chain_env(**{_chain.TOKEN_VAR: token, "PIPEKIT_WRITE_LOG": write_log,
                                      "PYTHONPATH": f"{HERE / '_writecount'}:{_chain.REPO}"})
            if trials % 2:
                env["PIPEKIT_RESUME_WITH_CLI"] = "1"
            served_start = dict(server.served)
            protected_frames = {}   # frame -> served count when it was already saved
            protected_phot = {}     # per-frame photometry file -> (inode, mtime) once saved
            while True:
                proc = _chain.start_chain(root, env, log=root / "run.log")
                delay = float(rng.uniform(0.0, full_seconds)) if kills < N_KILLS else None
                try:
                    code = proc.wait(timeout=delay if delay is not None else 300)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    kill_log.append((trials, round(delay, 2)))
                    # What a kill leaves: every final-named file parses...
                    _chain.check_every_file_parses(root)
                    # ...and what was saved must never be fetched or measured again.
                    for name in _saved_frames(root):
                        protected_frames.setdefault(name, server.served[name])
                    for path, stamp in _photometry_files(root).items():
                        protected_phot.setdefault(path, stamp)
                    if list((root / "reduction").glob("*/*/*/dataset.lock")):
                        kills_holding_a_lock += 1
                    continue
                assert code == 0, (f"trial {trials}: the resumed chain failed after kills "
                                   f"{kill_log}:\n" + (root / "run.log").read_text()[-4000:])
                break

            # Identical light curves to the uninterrupted run.
            got = {k: _chain.lc_columns(p) for k, p in _chain.light_curves(root).items()}
            assert sorted(got) == sorted(reference), f"trial {trials}: datasets {sorted(got)}"
            for key in reference:
                _chain.assert_same_columns(got[key], reference[key], f"trial {trials} {key}")
            # No frame downloaded again after it was saved; each frame saved at most once
            # more than the times a kill interrupted it.
            for name, count in protected_frames.items():
                assert server.served[name] == count, \
                    f"trial {trials}: {name} downloaded again after it was saved"
            assert len(_saved_frames(root)) == n_frames
            # No per-frame photometry rewritten after it was saved.
            for path, stamp in protected_phot.items():
                if path.name == "reference_stars.ecsv" or path.name.endswith("_lc.ecsv"):
                    continue
                st = path.stat()
                assert (st.st_ino, st.st_mtime_ns) == stamp, \
                    f"trial {trials}: {path.name} measured again after it was saved"
            # Every frame measured exactly once over all the killed and resumed runs.
            _assert_each_frame_saved_once(write_log, n_frames, f"trial {trials}")
            # No stale lock left behind, and nothing half-written anywhere.
            assert not list((root / "reduction").glob("*/*/*/dataset.lock"))
            _chain.check_every_file_parses(root)
            downloads = sum(server.served[n] - served_start.get(n, 0) for n in server.served)
            assert n_frames <= downloads <= n_frames + N_KILLS

    print(f"{kills} kills over {trials} trials (uninterrupted run {full_seconds:.1f} s), "
          f"{kills_holding_a_lock} left a dead run's dataset lock; kill instants {kill_log}")
    assert kills == N_KILLS
    # Some kills left a dead run's dataset lock behind: the next run was not blocked by it.
    assert kills_holding_a_lock >= 1, kill_log
