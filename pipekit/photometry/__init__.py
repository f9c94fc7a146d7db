"""Aperture photometry of a target and its field stars, ensemble normalisation and times.

One module per concern: `apertures` (exact-overlap sums), `sky` (sigma-clipped annulus sky),
`alignment` (one common centroid shift per frame), `detection` (field stars on a reference
frame), `frame` (`measure_frame`: one frame from arrays, no files in sight), `ensemble`
(`normalise_ensemble`), `times` (`bjd_tdb`), `flags`, and `dataset` (`measure_dataset`: a
whole dataset folder, one resumable per-frame file at a time).
"""

from .alignment import centroid_shift
from .apertures import aperture_sums, circular_overlap
from .dataset import (REFERENCE_STARS, REJECTED_FRAMES, DatasetPhotometry, load_dataset_config,
                      frame_photometry_path, invalidate_frame, measure_dataset,
                      measure_frame_file, write_ecsv)
from .detection import detect_stars
from .ensemble import Ensemble, normalise_ensemble
from .flags import (BAD_PIXELS, EDGE, FLAGS, NON_POSITIVE, OFF_FRAME, SATURATED, SKY_POOR,
                    describe_flags)
from .frame import MIN_SKY_PIXELS, measure_frame
from .sky import annulus_sky
from .times import bjd_tdb

__all__ = [
    "FLAGS", "OFF_FRAME", "EDGE", "SATURATED", "BAD_PIXELS", "SKY_POOR", "NON_POSITIVE",
    "MIN_SKY_PIXELS", "describe_flags", "circular_overlap", "aperture_sums", "annulus_sky",
    "measure_frame", "centroid_shift", "detect_stars", "bjd_tdb", "Ensemble",
    "normalise_ensemble", "DatasetPhotometry", "measure_dataset", "measure_frame_file",
    "load_dataset_config", "write_ecsv", "REFERENCE_STARS", "REJECTED_FRAMES",
    "invalidate_frame", "frame_photometry_path",
]
