"""Frames read and measured in worker processes (`pipekit.photometry.workers`): the same
results as in one process, errors per frame, a dying worker, an interrupted parent."""

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from astropy.table import Table

from pipekit.config import load_reduction_config, write_reduction_config
from pipekit.frames import read_frame
from pipekit.photometry import measure_dataset, tasks, workers
from pipekit.photometry.reading import FrameCache
from pipekit.photometry.workers import InlinePool, ProcessPool, photometry_processes
from pipekit.testing.simulate import simulate_dataset

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="worker processes are forked on Linux only")


def _dataset(root, name="T", n_frames=7, seed=5):
    red = root / name / "sinistro" / "ip"
    truth = simulate_dataset(red, n_frames=n_frames, shape=(256, 256), n_stars=40, seed=seed)
    write_reduction_config(red / "reduction_config.yaml", truth.meta["target"],
                           truth.meta["ra"], truth.meta["dec"])
    return red, truth


def _config(red, processes):
    config = load_reduction_config(red / "reduction_config.yaml")
    config.photometry.processes = processes
    return config


def _tables(red):
    return {p.name: Table.read(p, format="ascii.ecsv")
            for p in sorted((red / "photometry").glob("*.ecsv"))}


def test_two_processes_give_the_same_files_as_one(tmp_path):
    one, truth = _dataset(tmp_path / "one")
    two, _ = _dataset(tmp_path / "two")
    for red in (one, two):  # a frame that is not FITS, one without a WCS
        (red / "broken.fits").write_bytes(b"not fits")
    nowcs = read_frame(truth.files[1])
    from astropy.io import fits
    header = nowcs.header.copy()
    for key in ("CTYPE1", "CTYPE2"):
        del header[key]
    for red in (one, two):
        fits.writeto(red / "nowcs.fits", nowcs.data, header)

    r1 = measure_dataset(one, _config(one, 1))
    r2 = measure_dataset(two, _config(two, 2))
    assert sorted(r1.measured) == sorted(r2.measured) and len(r1.measured) == 7
    assert r1.reference_frame == r2.reference_frame
    assert set(r1.rejected) == set(r2.rejected) == {"broken.fits", "nowcs.fits"}
    assert [v.replace(str(one), "") for _, v in sorted(r1.rejected.items())] == \
        [v.replace(str(two), "") for _, v in sorted(r2.rejected.items())]
    t1, t2 = _tables(one), _tables(two)
    assert t1.keys() == t2.keys() and len(t1) == 8  # 7 frames and the star list
    for name in t1:
        assert t1[name].colnames == t2[name].colnames
        for col in t1[name].colnames:
            a, b = np.asarray(t1[name][col]), np.asarray(t2[name][col])
            if a.dtype.kind == "f":  # the bands' row offsets round the last bit differently
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=f"{name}: {col}")
            else:
                assert list(a) == list(b), f"{name}: {col}"
        meta1 = {k: v for k, v in t1[name].meta.items() if k != "frame"}
        meta2 = {k: v for k, v in t2[name].meta.items() if k != "frame"}
        assert meta1.keys() == meta2.keys()
        for key in meta1:
            if isinstance(meta1[key], float):
                assert meta1[key] == pytest.approx(meta2[key], rel=1e-10, abs=1e-10), key
            else:
                assert meta1[key] == meta2[key], key


def test_run_ordered_yields_in_order_with_errors_per_frame_and_keeps_frames_where_read(tmp_path):
    red, truth = _dataset(tmp_path, n_frames=5)
    (red / "broken.fits").write_bytes(b"not fits")
    files = list(truth.files)
    paths = files[:2] + [red / "broken.fits"] + files[2:]
    config = _config(red, 2)
    with ProcessPool(config, 2) as pool:
        got = list(pool.run_ordered("examine", paths))
        assert [g[0] for g in got] == paths
        assert got[2][1] is None and "not a readable FITS file" in str(got[2][2])
        cands = [g[1] for i, g in enumerate(got) if i != 2]
        assert all(c is not None and c.depth > 0 for c in cands)
        assert all(pool.holds(f) for f in files)       # each kept by the worker that read it
        from pipekit.photometry.reference import select_reference_stars

        rejected = {}
        stars = select_reference_stars(paths, config, rejected, red, pool)
        assert stars.meta["reference_frame"] == max(cands, key=lambda c: c.depth).path.name
        assert list(rejected) == ["broken.fits"]
        with InlinePool(config) as inline:   # the same list, made in one process
            alone = select_reference_stars(paths, config, {}, red, inline)
        np.testing.assert_allclose(np.asarray(alone["x_ref"]), np.asarray(stars["x_ref"]),
                                   rtol=0, atol=1e-9)
        pool.broadcast("use_stars", stars)
        measured = list(pool.run_ordered("measure", files))
        assert [m[0] for m in measured] == files
        assert [m[2] for m in measured] == [None] * len(files)
        assert not any(pool.holds(f) for f in files)   # measured: no longer kept
    with InlinePool(config) as inline:
        same = list(inline.run_ordered("examine", paths))
    assert [c.depth for c in cands] == [g[1].depth for i, g in enumerate(same) if i != 2]
    kept = read_frame(files[0])
    assert not FrameCache(budget=10).offer(files[0], kept)  # over the budget: not kept


def test_a_frame_that_kills_its_worker_is_rejected_and_the_others_measured(tmp_path,
                                                                           monkeypatch, caplog):
    red, truth = _dataset(tmp_path)
    deadly, once = truth.files[2].name, truth.files[4].name
    parent = os.getpid()
    measure = tasks.FrameWork.measure
    marker = tmp_path / "died-once"

    def crashing(self, path):
        if os.getpid() != parent and path.name == deadly:
            os.kill(os.getpid(), signal.SIGKILL)   # as a crash in a decompression library
        if os.getpid() != parent and path.name == once and not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)   # as the out-of-memory killer, once
        return measure(self, path)

    monkeypatch.setattr(tasks.FrameWork, "measure", crashing)
    caplog.set_level(logging.WARNING, "pipekit.photometry")
    result = measure_dataset(red, _config(red, 2))
    assert set(result.rejected) == {deadly}
    assert "died 2 times (killed by signal 9 (SIGKILL))" in result.rejected[deadly]
    assert once in result.measured and len(result.measured) == 6
    assert f"{once}: the worker process measuring it died (killed by signal 9 (SIGKILL)); " \
        "trying it again" in caplog.text
    assert multiprocessing.active_children() == []
    from pipekit.photometry.dataset import REJECTED_STAMPS
    import json
    stamps = json.loads((red / "photometry" / REJECTED_STAMPS).read_text())
    assert deadly not in stamps["frames"]   # a dying worker may be the machine's fault: again


def test_worker_logs_and_errors_reach_this_process(tmp_path, caplog):
    red, _ = _dataset(tmp_path)
    config = _config(red, 2)
    config.photometry.min_field_stars = 500      # more than the field has
    caplog.set_level(logging.WARNING, "pipekit.photometry")
    from pipekit.errors import PipekitError
    with pytest.raises(PipekitError, match=r"only \d+ field stars detected on the reference "
                                           r"frame .*min_field_stars = 500"):
        measure_dataset(red, config)
    warned = [r for r in caplog.records if "field stars detected" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert warned[0].process == os.getpid()      # logged here, from the worker's record
    assert multiprocessing.active_children() == []


def test_an_interrupted_measuring_pass_leaves_no_worker_behind(tmp_path, monkeypatch):
    from pipekit.photometry import dataset

    red, _ = _dataset(tmp_path)
    calls = []

    def interrupted(table, path):
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "write_ecsv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure_dataset(red, _config(red, 2))
    assert calls and multiprocessing.active_children() == []


def test_workers_die_with_a_killed_parent(tmp_path):
    red, _ = _dataset(tmp_path, n_frames=3)
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pipekit.config import load_reduction_config
        from pipekit.photometry.workers import ProcessPool
        pool = ProcessPool(load_reduction_config(Path({str(red)!r}) / "reduction_config.yaml"), 2)
        print(" ".join(str(w.process.pid) for w in pool._workers), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in pids if _alive(p)]
    assert alive == [], "worker processes outlived their SIGKILLed parent"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_how_many_processes(tmp_path, monkeypatch):
    red, _ = _dataset(tmp_path, n_frames=2)
    config = _config(red, None)
    cores = len(os.sched_getaffinity(0))
    assert photometry_processes(config, 100) == min(cores, workers.MAX_AUTO_PROCESSES)
    assert photometry_processes(config, 1) == 1
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as threads:   # pipelines run by an executor of threads
        assert threads.submit(photometry_processes, config, 100).result() == 1
    monkeypatch.setenv("PIPEKIT_CORES_PER_PIPELINE", "1")   # a Manager of max_parallel = cores
    assert photometry_processes(config, 100) == 1
    monkeypatch.setenv("PIPEKIT_CORES_PER_PIPELINE", "3")
    assert photometry_processes(config, 100) == 3
    monkeypatch.delenv("PIPEKIT_CORES_PER_PIPELINE")
    config.photometry.processes = 3
    assert photometry_processes(config, 100) == 3
    assert photometry_processes(config, 2) == 2
    monkeypatch.setattr(multiprocessing.current_process(), "_config",
                        dict(multiprocessing.current_process()._config, daemon=True))
    assert photometry_processes(config, 100) == 1   # a Dask worker


@pytest.mark.parametrize("n_bands", [2, 3])
def test_the_star_search_in_bands_finds_what_the_whole_frame_search_finds(tmp_path, n_bands):
    from pipekit.photometry.detection import (background_map, band_residual, dao_sources,
                                              detect_stars, detection_bands,
                                              detection_threshold, select_stars)

    truth = simulate_dataset(tmp_path / "one", n_frames=1, shape=(400, 400), n_stars=150, seed=9)
    frame = read_frame(truth.files[0])
    data = frame.data.copy()
    fwhm = 3.5
    # stars on and next to the bands' edges, where a band's search stops
    for y0, y1, lo, hi in detection_bands(data.shape, fwhm, n_bands)[1:]:
        for dy, x in ((-0.6, 60.3), (0.0, 120.0), (0.4, 180.7), (2.5, 220.2)):
            yy, xx = np.mgrid[0:data.shape[0], 0:data.shape[1]]
            data += 900.0 * np.exp(-((xx - x) ** 2 + (yy - lo - dy) ** 2) / (2 * 1.5 ** 2))
    bkg = background_map(data)
    whole = detect_stars(data, fwhm, 4.0, max_stars=500, border=5, min_separation=4,
                         background=bkg, saturate=4000.0)
    threshold, peak_max = detection_threshold(data, 4.0, saturate=4000.0, background=bkg)
    parts = [dao_sources(band_residual(data[y0:y1], y0, bkg), fwhm, threshold, peak_max, y0=y0,
                         keep=(lo, hi))
             for y0, y1, lo, hi in detection_bands(data.shape, fwhm, n_bands)]
    banded = select_stars(parts, data.shape, fwhm, max_stars=500, border=5, min_separation=4)
    assert len(whole) > 40
    edges = [lo for _, _, lo, _ in detection_bands(data.shape, fwhm, n_bands)[1:]]
    assert sum(np.min(np.abs(np.subtract.outer(np.asarray(whole["y"]), edges)), axis=1) < 1) >= 3
    for col in ("x", "flux", "peak"):
        np.testing.assert_array_equal(np.asarray(banded[col]), np.asarray(whole[col]))
    # a band's rows start at y0: its centroid rows plus y0 round the last bit differently
    np.testing.assert_allclose(np.asarray(banded["y"]), np.asarray(whole["y"]), rtol=0, atol=1e-9)


def test_the_highest_sky_is_found_without_making_the_map():
    from pipekit.photometry.detection import background_map

    yy, xx = np.mgrid[0:300, 0:350]
    rng = np.random.default_rng(3)
    for sky in (1000 + 3.0 * xx - 2.0 * yy + 0.01 * (xx - 170) ** 2,   # gradient and curvature
                1000 + 400 * np.exp(-((xx - 330) ** 2 + (yy - 20) ** 2) / 5000.0)):  # a corner
        bkg = background_map((sky + rng.normal(0, 5, sky.shape)).astype(np.float32), box=32)
        whole = bkg.sampled(np.arange(sky.shape[0]), np.arange(sky.shape[1]), np.float32)
        assert bkg.highest() == pytest.approx(float(whole.max()), rel=1e-7)


def test_a_rejected_frame_is_not_tried_again_until_its_file_or_the_settings_change(
        tmp_path, monkeypatch, caplog):
    from astropy.io import fits

    from pipekit.photometry.dataset import REJECTED_STAMPS

    red, truth = _dataset(tmp_path, n_frames=5)
    frame = read_frame(truth.files[1])
    header = frame.header.copy()
    for key in ("CTYPE1", "CTYPE2"):
        del header[key]
    fits.writeto(red / "nowcs.fits", frame.data, header)
    first = measure_dataset(red, _config(red, 1))
    assert set(first.rejected) == {"nowcs.fits"} and first.unchanged_rejected == []
    tried = []
    measure = tasks.FrameWork.measure
    monkeypatch.setattr(tasks.FrameWork, "measure",
                        lambda self, path: tried.append(path.name) or measure(self, path))
    caplog.set_level(logging.INFO, "pipekit.photometry")
    again = measure_dataset(red, _config(red, 1))
    assert tried == [] and again.unchanged_rejected == ["nowcs.fits"]
    assert again.rejected == first.rejected
    assert "1 rejected (1 of them unchanged since an earlier run rejected them" in caplog.text
    os.utime(red / "nowcs.fits", ns=(time.time_ns(), time.time_ns() + 10 ** 9))  # replaced
    third = measure_dataset(red, _config(red, 1))
    assert tried == ["nowcs.fits"] and third.unchanged_rejected == []
    config = _config(red, 1)
    config.photometry.align_tolerance_arcsec = 0.9   # another setting: everything again
    tried.clear()
    measure_dataset(red, config)
    assert "nowcs.fits" in tried and len(tried) == 6
    (red / "photometry" / REJECTED_STAMPS).unlink()
    tried.clear()
    measure_dataset(red, config)
    assert tried == ["nowcs.fits"]


def test_a_full_dev_shm_sends_the_band_to_the_temporary_folder(monkeypatch):
    import errno
    import tempfile

    from pipekit.photometry.tasks import remove_band_file, write_band_file

    band = np.arange(12, dtype=np.float32).reshape(3, 4)
    save, mkstemp, saves, names = tasks.np.save, tempfile.mkstemp, [], []

    def full_once(fh, array):
        saves.append(1)
        if len(saves) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(fh, array)

    def recorded(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        names.append(name)
        return fd, name

    monkeypatch.setattr(tasks.np, "save", full_once)
    monkeypatch.setattr(tempfile, "mkstemp", recorded)
    name = write_band_file(band)
    try:
        assert len(names) == 2 and not os.path.exists(names[0])   # the first one removed
        if os.access("/dev/shm", os.W_OK):
            assert names[0].startswith("/dev/shm/")
        assert name == names[1] and name.startswith(tempfile.gettempdir())
        np.testing.assert_array_equal(np.load(name), band)
    finally:
        remove_band_file(name)


def test_a_band_lost_with_a_dying_worker_is_an_error_that_says_so(tmp_path):
    from pipekit.errors import PipekitError

    red, truth = _dataset(tmp_path, n_frames=1)
    work = tasks.FrameWork(_config(red, 1))
    with pytest.raises(PipekitError, match="lost a band with a worker process that died"):
        work.detect_kept_band(truth.files[0])   # no split_detection ran in this process


def test_old_objects_out_of_gc_freezes_for_the_block_only():
    import gc
    import weakref

    from pipekit.worker import old_objects_out_of_gc

    if gc.get_freeze_count():
        pytest.skip("objects are frozen already in this process")

    class Node:
        pass

    with old_objects_out_of_gc():
        assert gc.get_freeze_count() > 0
        with old_objects_out_of_gc():   # nested: left to the outer block
            pass
        assert gc.get_freeze_count() > 0
        a, b = Node(), Node()
        a.other, b.other = b, a      # a cycle made inside the block is still collected
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    assert gc.get_freeze_count() == 0


def test_the_photometry_step_runs_with_the_imports_frozen_and_gives_them_back(tmp_path,
                                                                              monkeypatch):
    import gc

    from pipekit import steps

    if gc.get_freeze_count():
        pytest.skip("objects are frozen already in this process")
    red, _ = _dataset(tmp_path, n_frames=3)
    monkeypatch.setenv("PIPEKIT_CORES_PER_PIPELINE", "2")
    seen = []
    inner = steps.measure_dataset
    monkeypatch.setattr(steps, "measure_dataset",
                        lambda *a, **k: seen.append(gc.get_freeze_count()) or inner(*a, **k))
    result = steps.photometry(red)
    assert result["status"] == "success" and result["n_measured"] == 3
    assert seen and seen[0] > 0 and gc.get_freeze_count() == 0
