"""Joining simulated datasets: one truth for frames of several telescopes in one folder."""

import numpy as np

from .simulate import SimulationTruth

__all__ = ["combine_truths"]


def combine_truths(truths):
    """One `SimulationTruth` for datasets written into one folder (e.g. two telescopes).

    The parts share their `StarField` and event (``stars=``, ``event=`` of `simulate_dataset`).
    Per-frame arrays and ``meta`` lists are joined in time order; ``meta`` also lists each
    frame's ``pixscale``, ``gain``, ``rdnoise`` and ``throughput``.

    Parameters
    ----------
    truths : sequence of SimulationTruth

    Returns
    -------
    SimulationTruth
        Scalars (gain, read noise, pixel scale ...) are those of the first part.
    """
    first = truths[0]
    if any(t.stars is not first.stars or t.event is not first.event for t in truths):
        raise ValueError("combine_truths: the parts must share one StarField and one event")
    order = np.argsort(np.concatenate([t.mjd_start for t in truths]), kind="stable")

    def join(name):
        return np.concatenate([getattr(t, name) for t in truths])[order]
    meta = dict(first.meta)
    for key in ("wcserr", "cr_near_target_px"):
        joined = [v for t in truths for v in t.meta[key]]
        meta[key] = [joined[i] for i in order]
    for key in ("pixscale", "gain", "rdnoise", "throughput"):
        meta[key] = [float(v) for v in np.concatenate(
            [np.full(len(t.files), t.meta.get(key, getattr(t, key, 1.0))) for t in truths])[order]]
    offsets = np.cumsum([0] + [len(t.files) for t in truths])
    hits = np.concatenate([np.asarray(t.meta["target_hits"], int) + o
                           for t, o in zip(truths, offsets)])
    meta["target_hits"] = [int(i) for i in np.flatnonzero(np.isin(order, hits))]
    files = [f for t in truths for f in t.files]
    return SimulationTruth(
        folder=first.folder, files=[files[i] for i in order], stars=first.stars,
        event=first.event, source_flux=first.source_flux, mjd_start=join("mjd_start"),
        mjd_mid=join("mjd_mid"), exptime=first.exptime, transparency=join("transparency"),
        sky=join("sky"), fwhm_arcsec=join("fwhm_arcsec"), target_flux=join("target_flux"),
        star_flux=join("star_flux"), x=join("x"), y=join("y"), gain=first.gain,
        rdnoise=first.rdnoise, saturate=first.saturate, pixscale=first.pixscale, meta=meta)
