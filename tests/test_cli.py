"""The pipekit command: sub-commands, help, exit codes and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipekit import Pipeline, load
from pipekit.cli import main


def checkpointed(tmp_path, fail=True):
    flag = tmp_path / "fixed"
    if not fail:
        flag.touch()
    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="cli-test")
    pipe.add_step(lambda: {"status": "success"}, name="first")
    pipe.add_step(lambda flag: {"status": "success"} if os.path.exists(flag)
                  else {"status": "error", "message": "flag file missing"},
                  name="second", flag=str(flag))
    try:
        pipe.run()
    except Exception:
        pass
    return pipe, flag


def test_init_writes_the_templates_and_keeps_existing_files(tmp_path, capsys):
    (tmp_path / "tom_config.yaml").write_text("url: mine\n")
    assert main(["init", str(tmp_path)]) == 0
    for name in ("data_download.yaml", "reduction_config.yaml",
                 "reduction_manager_config.yaml", "tom_config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "tom_config.yaml").read_text() == "url: mine\n"
    assert "kept" in capsys.readouterr().out


def test_status_shows_the_step_table_and_exit_code(tmp_path, capsys):
    checkpointed(tmp_path)
    assert main(["status", str(tmp_path / "logs")]) == 1
    out = capsys.readouterr().out
    assert "second" in out and "error" in out and "failed step: second" in out
    assert main(["status", str(tmp_path / "nothing")]) == 2


def test_resume_after_fix_exits_zero_and_reruns_only_the_failed_step(tmp_path, capsys):
    pipe, flag = checkpointed(tmp_path)
    first_finished = pipe.steps[0].finished
    assert main(["resume", str(tmp_path / "logs" / "pipeline.p")]) == 1
    assert "flag file missing" in capsys.readouterr().err
    flag.touch()
    assert main(["resume", str(tmp_path)]) == 0  # a folder holding logs/pipeline.p
    done = load(tmp_path / "logs" / "pipeline.p")
    assert done.status == "success" and done.steps[0].finished == first_finished


def test_configuration_error_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "data_download.yaml"
    bad.write_text("archives: 3\n")
    assert main(["download", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipekit download: ") and "\n" not in err and "archives" in err


def test_reduce_of_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["reduce", str(tmp_path / "nope")]) == 2
    assert "is not a dataset folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["init", "download", "reduce", "manage", "status",
                                     "resume", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: pipekit {command}" in capsys.readouterr().out


def test_console_script_runs_and_bad_usage_exits_2():
    exe = Path(sys.executable).parent / "pipekit"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipekit.cli"]
    proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "demo" in proc.stdout
    proc = subprocess.run(cmd + ["frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.slow
def test_manage_runs_on_a_dask_scheduler_given_by_address(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    from pipekit.datasets import configure_dataset, sort_frames
    from pipekit.testing.simulate import simulate_dataset

    for k, filt in enumerate(("ip", "gp")):
        simulate_dataset(tmp_path / "downloads", n_frames=6, shape=(256, 256), n_stars=40,
                         filter=filt, seed=k, first_frame_number=1 + 100 * k)
    for red_dir in sort_frames(tmp_path / "downloads", tmp_path / "reduction").sorted:
        configure_dataset(red_dir)
    config = tmp_path / "reduction_manager_config.yaml"
    config.write_text("log_dir: logs\ndata_reduction_dir: reduction\n"
                      "instrument_list: [sinistro]\ndataset_selection:\n  group: all\n"
                      "max_parallel: 2\n")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0") as cluster:
        code = main(["manage", str(config), "--scheduler", cluster.scheduler_address,
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert len(list((tmp_path / "reduction").glob("*/*/*/*_lc.ecsv"))) == 2
    assert out.count("success") >= 2


# ---- end to end: a dataset exactly as the existing microlensing pipeline lays it out -------

def _seed_dataset(red_dir, filt, seed, legacy=False):
    """Frames funpacked (``.fits``) at the top of ``red_dir`` (or in ``data/``, as an earlier
    pipekit sorted them) and the seed's example reduction config with real values."""
    from astropy import units as u
    from astropy.coordinates import Angle

    from _seed_files import SEED_REDUCTION_CONFIG, write_seed_file
    from pipekit.testing.simulate import simulate_dataset

    truth = simulate_dataset(red_dir / "data" if legacy else red_dir, n_frames=5, seed=seed,
                             filter=filt, shape=(256, 256), n_stars=40, compress=False)
    ra = Angle(truth.meta["ra"], u.deg).to_string(unit=u.hourangle, sep=":", precision=2)
    dec = Angle(truth.meta["dec"], u.deg).to_string(unit=u.deg, sep=":", precision=1)
    tom = write_seed_file(red_dir.parent / "tom_config.yaml",
                          "url: https://tom.example.org\nusername: me\n"
                          "password_envvar: TOM_PASSWORD\n")
    write_seed_file(red_dir / "reduction_config.yaml", SEED_REDUCTION_CONFIG, [
        ("'TEST'\n  RA", f"'{truth.meta['target']}'\n  RA"), ("17:30:25.5", ra),
        ("-25:30:30.5", dec), ("name_of_image.fits", truth.files[2].name),
        ("upload: True", "upload: False"), ("/path/to/config", tom)])
    return truth


def _pipekit(*args):
    exe = Path(sys.executable).parent / "pipekit"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipekit.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_reduce_and_manage_a_dataset_laid_out_as_the_existing_pipeline_does(tmp_path):
    from _seed_files import SEED_MANAGER_CONFIG, write_seed_file
    from pipekit.lco import list_frames

    reduction = tmp_path / "reduction"
    target = "OGLE-2026-BLG-0034"
    ip = reduction / target / "sinistro" / "ip"
    gp = reduction / target / "sinistro" / "gp"
    ip_truth = _seed_dataset(ip, "ip", seed=71)
    _seed_dataset(gp, "gp", seed=72, legacy=True)     # sorted by an earlier pipekit

    proc = _pipekit("reduce", ip)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lc = ip / f"{target}_ip_lc.ecsv"
    assert lc.is_file() and (ip / f"{target}_ip_lc.csv").is_file()
    phot = load(ip / "logs" / "pipeline.p").steps[0].result
    assert phot["reference_frame"] == ip_truth.files[2].name     # the seed's reference_image
    assert phot["n_measured"] == 5
    # outputs in subfolders: the top of red_dir holds the same frames as before, and no other
    assert [p.name for p in list_frames(ip)] == sorted(f.name for f in ip_truth.files)

    listing = write_seed_file(tmp_path / "reduce_datasets.txt", "",
                              append=f"{target}/sinistro/ip\n{target}/sinistro/gp\n")
    config = write_seed_file(tmp_path / "reduction_manager_config.yaml", SEED_MANAGER_CONFIG, [
        ("/path/to/logging/directory/", tmp_path / "manager_logs"),
        ("/path/to/top-level/reduction/directory/", reduction),
        ("/path/to/software/installation/directory/", tmp_path / "microlensing_photometry"),
        ("/path/to/datasets/file/reduce_datasets.txt", listing)], append="max_parallel: 2\n")
    lc.unlink()
    proc = _pipekit("manage", config, "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lc.is_file()
    assert (gp / f"{target}_gp_lc.ecsv").is_file()
    assert sorted(p.name for p in (gp / "photometry").glob("*-e91.ecsv")) == sorted(
        p.name.replace(".fits", ".ecsv") for p in list_frames(gp / "data"))
