"""Shared set-up of the reliability tests: a small simulated sky, an archive, configs.

``make_world`` simulates small LCO-like datasets into ``<root>/archive`` and writes
``data_download.yaml`` (and a manager config) pointing at a local archive server;
``run_chain`` drives download -> sort -> configure -> reduce in a subprocess
(``_chain_runner.py``), resuming from checkpoints when they exist.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNNER = HERE / "_chain_runner.py"

TARGET = "OGLE-2026-BLG-0034"
RA, DEC = 269.7596, -28.2094
PROPOSAL = "KEY2026B-001"
TOKEN_VAR = "PIPEKIT_RELIABILITY_TOKEN"
DATASETS = (("lsc", "1m005", "fa15", "ip"), ("coj", "0m409", "sq34", "gp"))


def simulate_archive(folder, n_frames=12, shape=(256, 256), datasets=DATASETS, seed=7,
                     target=TARGET):
    """Simulate ``datasets`` (site, telescope, instrument, filter) into ``folder``."""
    from astropy.time import Time

    from pipekit.testing.simulate import PaczynskiEvent, make_star_field, simulate_dataset

    start = "2026-08-01T00:00:00"
    cadence = 4.0
    t0 = Time(start, scale="utc").mjd + n_frames * cadence / 24 / 2
    event = PaczynskiEvent(t0=t0, u0=0.2, tE=1.5)
    stars = make_star_field(RA, DEC, n_stars=120, size_arcsec=200.0, seed=seed)
    truths = []
    for k, (site, tel, inst, filt) in enumerate(datasets):
        truths.append(simulate_dataset(
            folder, n_frames=n_frames, target=target, ra=RA, dec=DEC, instrument=inst,
            filter=filt, site=site, telescope=tel, event=event, stars=stars, seed=seed + k,
            start=start, cadence_hours=cadence, shape=shape, first_frame_number=1 + 1000 * k))
    return truths


def write_download_config(root, url, token_var=TOKEN_VAR, extra_archive="", template="none"):
    """``<root>/data_download.yaml`` for the archive at ``url``."""
    path = Path(root) / "data_download.yaml"
    path.write_text(f"""\
archives:
  sim:
    name: sim
    active: true
    url: {url}
    token_envvar: {token_var}
    proposals: [{PROPOSAL}]
{extra_archive}log_dir: logs
frame_list: logs/frame_list.txt
data_download_dir: downloads
data_reduction_dir: reduction
start_datetime: '2026-07-30 00:00'
end_datetime: '2026-08-30 00:00'
default_red_config: {template}
""")
    return path


def write_manager_config(root, max_parallel=1):
    """``<root>/reduction_manager_config.yaml`` selecting every dataset."""
    path = Path(root) / "reduction_manager_config.yaml"
    path.write_text(f"""\
log_dir: logs/manager
data_reduction_dir: reduction
instrument_list: [sinistro, qhy]
dataset_selection:
  group: all
max_parallel: {max_parallel}
""")
    return path


def chain_env(**extra):
    """The environment of a chain subprocess: pipekit importable, astropy offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_chain(root, env, log=None):
    """Start ``_chain_runner.py ROOT`` (returns the Popen)."""
    cmd = [sys.executable, str(RUNNER), str(root)]
    if not log:
        return subprocess.Popen(cmd, env=env, cwd=str(root), stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    # The child has its own copy of the descriptor: the parent's is closed at once, not
    # left to the garbage collector (a ResourceWarning, an error under -W error).
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=str(root), stdout=out,
                                stderr=subprocess.STDOUT)


def run_chain(root, env, timeout=300, log=None):
    """Run the chain to its end; return the exit code."""
    proc = start_chain(root, env, log)
    return proc.wait(timeout=timeout)


def light_curves(root):
    """{dataset relative path: ECSV path} under ``<root>/reduction``."""
    red = Path(root) / "reduction"
    return {str(p.parent.relative_to(red)): p for p in sorted(red.glob("*/*/*/*_lc.ecsv"))}


def lc_columns(path):
    """The data columns of a light-curve ECSV, frame paths reduced to file names."""
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")
    out = {}
    for name in table.colnames:
        col = table[name]
        if col.dtype.kind in "USO":
            out[name] = [Path(str(v)).name for v in col]
        else:
            out[name] = np.asarray(col)
    return out


def assert_same_columns(a, b, what=""):
    assert list(a) == list(b), f"{what}: columns differ: {list(a)} != {list(b)}"
    for name in a:
        if isinstance(a[name], list):
            assert a[name] == b[name], f"{what}: column {name} differs"
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{what}: column {name}")


def check_every_file_parses(root, skip=()):
    """Open every FITS, ECSV, CSV, YAML, JSON and pickle under ``root``; return the count.

    Raises AssertionError naming the first file that does not parse. Files whose
    name starts with the atomic-write prefix are temporaries, not final names.
    """
    import json

    import yaml
    from astropy.io import fits
    from astropy.table import Table

    from pipekit.atomic import TMP_PREFIX

    n = 0
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.name.startswith(TMP_PREFIX) or path in skip:
            continue
        name = path.name
        try:
            if name.endswith((".fits", ".fits.fz")):
                with fits.open(path, checksum=True) as hdul:
                    for hdu in hdul:
                        if hdu.data is not None:
                            np.asarray(hdu.data).sum()
            elif name.endswith(".ecsv"):
                Table.read(path, format="ascii.ecsv")
            elif name.endswith(".csv"):
                Table.read(path, format="ascii.csv")
            elif name.endswith((".yaml", ".yml")):
                yaml.safe_load(path.read_text())
            elif name.endswith(".json"):
                json.loads(path.read_text())
            elif name.endswith(".p"):
                from pipekit.pipeline import load
                load(path)
            else:
                continue
        except Exception as exc:  # the assertion names the file
            raise AssertionError(f"{path} does not parse: {type(exc).__name__}: {exc}") from exc
        n += 1
    return n
