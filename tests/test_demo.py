"""The README's main-job command, exactly as written, and what it produces."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from astropy.table import Table

REPO = Path(__file__).resolve().parents[1]


def readme_command(purpose):
    """The command in the README's set-up block whose comment names ``purpose``."""
    text = (REPO / "README.md").read_text()
    for line in text.splitlines():
        if line.startswith("bash scripts/") and purpose in line:
            return line.split("#")[0].strip()
    raise AssertionError(f"no README command for {purpose!r}")


@pytest.mark.slow
def test_readme_demo_command_reduces_the_simulated_event():
    command = readme_command("pipekit demo")
    assert command == "bash scripts/demo.sh"
    out_dir = REPO / "pipekit-demo"
    shutil.rmtree(out_dir, ignore_errors=True)
    proc = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    curves = sorted(out_dir.glob("reduction/*/*/*/*_lc.ecsv"))
    assert len(curves) == 4  # two instruments x two filters
    assert len(list(out_dir.glob("reduction/*/*/*/lightcurve.png"))) == 4
    assert len(list(out_dir.glob("reduction/*/*/*/*_lc.csv"))) == 4
    for path in curves:
        table = Table.read(path, format="ascii.ecsv")
        assert len(table) >= 35
        assert table.meta  # provenance travels with the light curve
    chi2 = [float(x) for x in re.findall(r"reduced chi2 against the true light curve ([\d.]+)",
                                          proc.stdout)]
    assert len(chi2) == 4 and all(0.5 < c < 2.0 for c in chi2), proc.stdout
    assert "downloaded 160 new frames" in proc.stdout
