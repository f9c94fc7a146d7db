"""Aperture photometry of a target and its field stars, ensemble normalisation and times.

One module per concern: `apertures` (exact-overlap sums), `sky` (sigma-clipped annulus sky),
`alignment` (star-pattern matching and a common centroid shift per frame), `detection`
(background maps, field stars on the reference frame, bright sources on every frame),
`cosmics` (cosmic-ray hits in apertures), `reference` (the deepest frame, its star list
and the settings hashes), `frame` (`measure_frame`: one frame from arrays, no files in
sight), `ensemble` (`normalise_ensemble`), `times` (`bjd_tdb`), `flags`, and `dataset` (`measure_dataset`: a
whole dataset folder, one resumable per-frame file at a time).
"""

from .alignment import Match, Similarity, centroid_shift, fit_similarity, match_stars
from .apertures import aperture_sums, circular_overlap, repair_bad_pixels
from .cosmics import cosmic_ray_hits, psf_peak_contrast, sharp_sources
from .dataset import (REFERENCE_STARS, REJECTED_FRAMES, DatasetPhotometry, load_dataset_config,
                      frame_photometry_path, invalidate_frame, measure_dataset,
                      measure_frame_file, write_ecsv)
from .detection import Background, background_map, bright_sources, detect_stars
from .ensemble import Ensemble, normalise_ensemble
from .flags import (BAD_PIXELS, COSMIC_RAY, EDGE, FLAGS, NON_POSITIVE, OFF_FRAME, SATURATED,
                    SKY_POOR, describe_flags)
from .frame import MIN_SKY_PIXELS, measure_frame
from .reference import field_depth, frame_settings_hash, select_reference_stars, star_list_hash
from .sky import annulus_sky
from .times import bjd_tdb

__all__ = [
    "FLAGS", "OFF_FRAME", "EDGE", "SATURATED", "BAD_PIXELS", "SKY_POOR", "NON_POSITIVE",
    "COSMIC_RAY", "Similarity", "Match", "fit_similarity", "match_stars", "Background",
    "background_map", "bright_sources", "cosmic_ray_hits", "psf_peak_contrast", "field_depth",
    "select_reference_stars", "star_list_hash", "frame_settings_hash",
    "MIN_SKY_PIXELS", "describe_flags", "circular_overlap", "aperture_sums", "annulus_sky",
    "measure_frame", "centroid_shift", "detect_stars", "bjd_tdb", "Ensemble",
    "normalise_ensemble", "DatasetPhotometry", "measure_dataset", "measure_frame_file",
    "load_dataset_config", "write_ecsv", "REFERENCE_STARS", "REJECTED_FRAMES",
    "invalidate_frame", "frame_photometry_path", "repair_bad_pixels", "sharp_sources",
]
