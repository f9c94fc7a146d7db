"""Per-frame cost of the issue-11 work on 2048x2048 frames: background map, bright-source list,
star-pattern match, cosmic-ray test and bad-pixel repair, against the frame's read time.

Run from the repository root:  python benchmarks/alignment_cosmics_cost.py [--frames 3]
It simulates the frames (with cosmic rays and masked pixels) in a temporary folder, removed
afterwards, and prints milliseconds per frame and each part as a fraction of the read time.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat=3):
    """Best wall time of ``repeat`` calls (seconds) and the last result."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="frames to time (default 3)")
    parser.add_argument("--stars", type=int, default=800, help="field stars (default 800)")
    args = parser.parse_args()

    from pipekit.frames import read_frame
    from pipekit.photometry import (background_map, cosmic_ray_hits, match_stars,
                                    measure_frame, sharp_sources)
    from pipekit.photometry.apertures import repair_bad_pixels
    from pipekit.photometry.detection import bright_sources
    from pipekit.testing.simulate import simulate_dataset

    shape = (2048, 2048)
    tmp = Path(tempfile.mkdtemp(prefix="pipekit-bench-"))
    try:
        truth = simulate_dataset(tmp, n_frames=args.frames, shape=shape, n_stars=args.stars,
                                 seed=5, header_offset_px=(5.0, 25.0), header_rotation_deg=1.0,
                                 cosmic_rays=200, bad_columns=3, nan_pixels=2000)
        rows = []
        for i, path in enumerate(truth.files):
            t_read, frame = _best(lambda: read_frame(path))
            data, info = frame.data, frame.info
            fwhm = truth.fwhm_arcsec[i] / truth.pixscale
            r = 3.0 / truth.pixscale
            x, y = truth.x[i], truth.y[i]
            on = (x > 20) & (x < shape[1] - 20) & (y > 20) & (y < shape[0] - 20)
            x, y = x[on], y[on]
            t_bkg, bkg = _best(lambda: background_map(data))
            def sources():  # as measure_frame_file: 80 brightest, cosmic rays out
                bkg.sources.clear()  # found anew each time (a Background remembers them)
                sx, sy, _ = bright_sources(data, fwhm, n=80, background=bkg,
                                           saturate=info.saturate)
                star = ~sharp_sources(data, sx, sy, fwhm, info.gain, info.rdnoise, bkg)
                return sx[star][:40], sy[star][:40]

            t_src, (sx, sy) = _best(sources)
            # the reference pattern: the true positions moved by a header-like error
            order = np.argsort(-truth.star_flux[i][1:][on[1:]])[:50] + 1
            a = np.radians(1.0)
            c = (np.array(shape[::-1]) - 1) / 2
            hx = c[0] + np.cos(a) * (x[order] - c[0]) - np.sin(a) * (y[order] - c[1]) + 17.0
            hy = c[1] + np.sin(a) * (x[order] - c[0]) + np.cos(a) * (y[order] - c[1]) - 9.0
            t_match, m = _best(lambda: match_stars(np.column_stack([hx, hy]),
                                                   np.column_stack([sx, sy]), tolerance=2.0,
                                                   max_shift=64, centre=tuple(c)))
            sky = np.full(len(x), bkg.level)
            t_cr, _ = _best(lambda: cosmic_ray_hits(data, x, y, r, fwhm, info.gain,
                                                    info.rdnoise, sky))
            flat = data - bkg.map
            t_fix, _ = _best(lambda: repair_bad_pixels(flat.copy(), x, y, r))
            t_phot, _ = _best(lambda: measure_frame(data, np.column_stack([x, y]), r, 5 / 0.389,
                                                    8 / 0.389, info.gain, info.rdnoise,
                                                    background=bkg))
            rows.append((t_read, t_bkg, t_src, t_match, t_cr, t_fix, t_phot,
                         m is not None and m.n_matched))
        a = np.array([r[:7] for r in rows]).mean(axis=0) * 1e3
        names = ["read frame", "background map", "bright sources (80, CRs out)",
                 "star-pattern match",
                 f"cosmic-ray test ({len(x)} apertures)", "bad-pixel repair",
                 "measure_frame (incl. repair)"]
        print(f"{args.frames} frames of {shape[1]}x{shape[0]}, {len(x)} stars, "
              f"{[r[7] for r in rows]} stars matched")
        for name, ms in zip(names, a):
            print(f"  {name:34s} {ms:8.1f} ms   {ms / a[0]:5.2f} x read")
        extra = a[1] + a[2] + a[3] + a[4]
        print(f"  {'alignment + cosmic rays':34s} {extra:8.1f} ms   {extra / a[0]:5.2f} x read")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
