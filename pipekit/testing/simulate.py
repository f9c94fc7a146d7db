"""Synthetic LCO-like frames with a known truth, for tests, the demo and benchmarks.

Frames carry the LCO header keys pipekit reads and a TAN WCS; they hold field stars
with a Moffat PSF whose width changes frame to frame, sky, Poisson and read noise,
transparency changes, pointing jitter, small rotations, saturation, and a target
whose flux follows a Paczyński microlensing light curve.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from ..atomic import atomic_write

__all__ = ["PaczynskiEvent", "StarField", "SimulationTruth", "SITES", "make_star_field",
           "simulate_frame", "simulate_dataset", "lco_filename"]

log = logging.getLogger("pipekit.testing.simulate")

#: LCO sites: (site name, latitude deg, east longitude deg, height m).
SITES = {
    "lsc": ("LCOGT node at Cerro Tololo", -30.1673833, -70.8047889, 2198.0),
    "cpt": ("LCOGT node at SAAO", -32.3805542, 20.8101815, 1807.0),
    "coj": ("LCOGT node at Siding Spring Observatory", -31.2729320, 149.0706480, 1116.0),
    "elp": ("LCOGT node at McDonald Observatory", 30.6796920, -104.0151720, 2027.0),
    "tfn": ("LCOGT node at Teide Observatory", 28.3002000, -16.5117000, 2330.0),
    "ogg": ("LCOGT node at Haleakala Observatory", 20.7069000, -156.2575000, 3055.0),
}

# Nominal pixel scale (arcsec/px), gain (e-/ADU), read noise (e-) and SATURATE (ADU)
# by instrument-name prefix, close to LCO's reduced (e91) frames.
_CAMERAS = {
    "fa": (0.389, 1.6, 7.5, 60000.0),
    "fl": (0.389, 1.6, 7.5, 60000.0),
    "kb": (0.571, 1.4, 13.5, 47000.0),
    "sq": (0.737, 1.0, 3.5, 60000.0),
    "ep": (0.270, 1.8, 11.0, 50000.0),
}


@dataclass
class PaczynskiEvent:
    """A point-source point-lens microlensing event.

    Parameters
    ----------
    t0 : float
        Time of closest approach (MJD).
    u0 : float
        Impact parameter in Einstein radii.
    tE : float
        Einstein crossing time in days.

    Examples
    --------
    >>> ev = PaczynskiEvent(t0=61253.0, u0=0.2, tE=3.0)
    >>> round(float(ev.magnification(61253.0)), 3)
    5.075
    """

    t0: float
    u0: float
    tE: float

    def magnification(self, t):
        """Paczyński magnification ``A(u) = (u² + 2) / (u √(u² + 4))`` at times ``t`` (MJD)."""
        tau = (np.asarray(t, dtype=float) - self.t0) / self.tE
        u = np.sqrt(self.u0 ** 2 + tau ** 2)
        return (u ** 2 + 2.0) / (u * np.sqrt(u ** 2 + 4.0))


@dataclass
class StarField:
    """Stars on the sky: positions (deg) and fluxes (ADU per frame at transparency 1).

    Row 0 is the target; its ``flux`` is the unmagnified source plus blend flux.
    ``variable`` marks field stars whose flux changes sinusoidally
    (``amplitude``, ``period`` days, ``phase``).
    """

    ra: np.ndarray
    dec: np.ndarray
    flux: np.ndarray
    variable: np.ndarray
    amplitude: np.ndarray
    period: np.ndarray
    phase: np.ndarray

    def __len__(self):
        return len(self.ra)

    def fluxes_at(self, mjd, event=None, source_flux=0.0):
        """True fluxes (ADU, transparency 1) of every star at ``mjd``.

        The target (row 0) gets ``source_flux * (A(t) - 1)`` added when ``event`` is given.
        """
        flux = self.flux.copy()
        var = self.variable
        flux[var] *= 1.0 + self.amplitude[var] * np.sin(2 * np.pi * mjd / self.period[var]
                                                        + self.phase[var])
        if event is not None:
            flux[0] += source_flux * (float(event.magnification(mjd)) - 1.0)
        return flux


@dataclass
class SimulationTruth:
    """What a simulated dataset really holds; arrays are per frame (rows) and star (columns).

    ``star_flux[i, j]`` is the flux deposited by star ``j`` in frame ``i`` (ADU, after the
    frame's transparency); ``target_flux`` is the target's flux before transparency, the
    quantity a normalised light curve should be proportional to.
    """

    folder: Path
    files: list
    stars: StarField
    event: PaczynskiEvent
    source_flux: float
    mjd_start: np.ndarray
    mjd_mid: np.ndarray
    exptime: float
    transparency: np.ndarray
    sky: np.ndarray
    fwhm_arcsec: np.ndarray
    target_flux: np.ndarray
    star_flux: np.ndarray
    x: np.ndarray
    y: np.ndarray
    gain: float
    rdnoise: float
    saturate: float
    pixscale: float
    meta: dict = field(default_factory=dict)


def lco_filename(site, telescope, instrument, day_obs, frame_number, rlevel=91, compress=True):
    """An LCO-style file name, e.g. ``lsc1m005-fa15-20260801-0042-e91.fits.fz``."""
    ext = ".fits.fz" if compress else ".fits"
    return f"{site}{telescope}-{instrument}-{day_obs}-{frame_number:04d}-e{rlevel:02d}{ext}"


def make_star_field(ra, dec, n_stars=150, *, size_arcsec=220.0, target_flux=3.5e4,
                    flux_range=(1.5e3, 6e6), n_variable=2, clear_arcsec=14.0, seed=None):
    """Draw a field of stars around a target at ``ra``, ``dec`` (degrees).

    Fluxes follow a power law (many faint, few bright; the brightest saturate). No field
    star falls within ``clear_arcsec`` of the target, so the target's sky annulus is
    clean and its truth is unambiguous.

    Returns
    -------
    StarField
        ``n_stars + 1`` rows, the target first.
    """
    rng = np.random.default_rng(seed)
    half = size_arcsec / 2.0
    cosd = np.cos(np.radians(dec))
    dx = np.empty(0)
    dy = np.empty(0)
    while dx.size < n_stars:
        cx = rng.uniform(-half, half, 2 * n_stars)
        cy = rng.uniform(-half, half, 2 * n_stars)
        ok = np.hypot(cx, cy) > clear_arcsec
        dx = np.concatenate([dx, cx[ok]])[:n_stars]
        dy = np.concatenate([dy, cy[ok]])[:n_stars]
    # N(>F) ~ F^-0.7 between the limits, by inverse transform sampling
    a = -0.7
    lo, hi = flux_range
    uu = rng.uniform(0, 1, n_stars)
    flux = (lo ** a + uu * (hi ** a - lo ** a)) ** (1 / a)
    flux[np.argmax(flux)] = hi  # at least one star saturates in every frame
    variable = np.zeros(n_stars + 1, bool)
    if n_variable:
        # variables among moderately bright stars, so their variability is plain to see
        order = np.argsort(flux)[::-1]
        pick = rng.choice(order[5:40], size=min(n_variable, n_stars), replace=False)
        variable[pick + 1] = True
    nvar = n_stars + 1
    return StarField(
        ra=np.concatenate([[ra], ra + dx / 3600.0 / cosd]),
        dec=np.concatenate([[dec], dec + dy / 3600.0]),
        flux=np.concatenate([[target_flux], flux]),
        variable=variable,
        amplitude=np.where(variable, rng.uniform(0.2, 0.4, nvar), 0.0),
        period=np.where(variable, rng.uniform(0.5, 3.0, nvar), 1.0),
        phase=rng.uniform(0, 2 * np.pi, nvar),
    )


def _tan_wcs(ra, dec, shape, pixscale, rotation_deg):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0]
    s = pixscale / 3600.0
    c, sn = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    # east to the left (RA decreasing with x), north up, then rotated
    w.wcs.cd = np.array([[-s * c, s * sn], [s * sn, s * c]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def _render_moffat(shape, x, y, flux, fwhm_px, beta=3.0):
    """Image of Moffat stars at 0-based pixel centres ``x``, ``y``, each normalised to ``flux``.

    The profile is integrated over each pixel (averaged on a sub-pixel grid, finer for sharper
    PSFs), as a detector does: point-sampling an undersampled PSF would make the flux inside an
    aperture depend on where the star falls within its pixel, a scatter real data lack.
    """
    ny, nx = shape
    alpha = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    h = int(np.ceil(4.0 * fwhm_px))
    sub = int(np.clip(np.ceil(8.0 / fwhm_px), 1, 5))
    u = (np.arange(sub) + 0.5) / sub - 0.5
    keep = (x > -h) & (x < nx + h) & (y > -h) & (y < ny + h)
    x, y, flux = x[keep], y[keep], flux[keep]
    img = np.zeros(nx * ny)
    off = np.arange(-h, h + 1)
    chunk = max(1, 4_000_000 // ((2 * h + 1) ** 2 * sub * sub))
    for k in range(0, len(x), chunk):
        cx, cy, cf = x[k:k + chunk], y[k:k + chunk], flux[k:k + chunk]
        ix, iy = np.rint(cx).astype(np.int64), np.rint(cy).astype(np.int64)
        dx = ((ix[:, None] + off) - cx[:, None])[:, :, None] + u     # (n, s, sub)
        dy = ((iy[:, None] + off) - cy[:, None])[:, :, None] + u
        r2 = dy[:, :, None, :, None] ** 2 + dx[:, None, :, None, :] ** 2
        prof = ((1.0 + r2 / alpha ** 2) ** (-beta)).mean(axis=(3, 4))  # (n, s, s)
        prof *= (cf / prof.sum(axis=(1, 2)))[:, None, None]
        px = np.broadcast_to((ix[:, None] + off)[:, None, :], prof.shape)
        py = np.broadcast_to((iy[:, None] + off)[:, :, None], prof.shape)
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        img += np.bincount((py * nx + px)[inside], weights=prof[inside], minlength=nx * ny)
    return img.reshape(shape)


def _header(*, target, ra, dec, filt, instrument, site, telescope, start, exptime, pixscale,
            gain, rdnoise, saturate, fwhm_arcsec, sky, frame_number, filename, airmass):
    name, lat, lon, height = SITES[site]
    t0 = Time(start, format="mjd", scale="utc")
    t1 = t0 + exptime * u.s
    # DAY-OBS is the date at the start of the local night (local noon to noon)
    day_obs = Time(start + lon / 360.0 - 0.5, format="mjd").strftime("%Y%m%d")
    h = fits.Header()
    cards = [
        ("ORIGIN", "LCOGT", "Organization responsible for the data"),
        ("SITEID", site, "ID code of the Observatory site"),
        ("SITE", name, "Site"),
        ("ENCID", "doma", "ID code of the Enclosure"),
        ("TELID", f"{telescope[:3]}a", "ID code of the Telescope"),
        ("TELESCOP", f"{telescope[:3]}-{telescope[-2:]}", "The Name of the Telescope"),
        ("LATITUDE", lat, "[deg North] Telescope Latitude"),
        ("LONGITUD", lon, "[deg East] Telescope Longitude"),
        ("HEIGHT", height, "[m] Altitude of Telescope above sea level"),
        ("OBSTYPE", "EXPOSE", "Observation type"),
        ("FRAMENUM", frame_number, "Running frame number"),
        ("ORIGNAME", filename.replace("-e91", "-e00").replace(".fz", ""), "Fname written by ICS"),
        ("TIMESYS", "UTC", "Time system used"),
        ("DATE-OBS", t0.isot, "[UTC] Start date and time of the observation"),
        ("DAY-OBS", day_obs, "[UTC] Date at start of local observing night"),
        ("UTSTART", t0.isot[11:], "[UTC] The start time of the observation"),
        ("UTSTOP", t1.isot[11:], "[UTC] The finish time of the observation"),
        ("MJD-OBS", round(start, 8), "[UTC days] Start date/time (Modified Julian Date)"),
        ("EXPTIME", exptime, "[s] Exposure length"),
        ("FILTER", filt, "Filter used"),
        ("INSTRUME", instrument, "Instrument used"),
        ("GAIN", gain, "[electrons/count] Pixel gain"),
        ("RDNOISE", rdnoise, "[electrons/pixel] Read noise"),
        ("SATURATE", saturate, "[ADU] Saturation level"),
        ("PIXSCALE", pixscale, "[arcsec/pixel] Nominal pixel scale on sky"),
        ("OBJECT", target, "Object name"),
        ("RA", Angle(ra, "deg").to_string("hourangle", sep=":", precision=3, pad=True),
         "[HH:MM:SS.sss] Right ascension"),
        ("DEC", Angle(dec, "deg").to_string("deg", sep=":", precision=2, alwayssign=True, pad=True),
         "[sDD:MM:SS.ss] Declination"),
        ("CAT-RA", Angle(ra, "deg").to_string("hourangle", sep=":", precision=3, pad=True),
         "[HH:MM:SS.sss] Catalog RA of the object"),
        ("CAT-DEC", Angle(dec, "deg").to_string("deg", sep=":", precision=2, alwayssign=True,
                                                pad=True), "[sDD:MM:SS.ss] Catalog Dec"),
        ("AIRMASS", round(airmass, 4), "Effective mean airmass"),
        ("RLEVEL", 91, "Reduction level"),
        ("PROPID", "KEY2026B-001", "Proposal ID"),
        ("L1FWHM", round(fwhm_arcsec, 4), "[arcsec] Frame FWHM in arcsec"),
        ("L1MEDIAN", round(sky, 3), "Median of frame background in counts"),
        ("PIPEKSIM", True, "Simulated by pipekit.testing.simulate"),
    ]
    for key, value, comment in cards:
        h[key] = value
        # keep each card within 80 characters (a long comment would be truncated with a warning)
        room = 80 - len(fits.Card(key, value).image.rstrip()) - 3
        if room > 0:
            h.comments[key] = comment[:room]
    return h, day_obs


def simulate_frame(path, stars, *, mjd_start, wcs, header_wcs=None, shape=(512, 512),
                   exptime=60.0, fwhm_arcsec=1.8, transparency=1.0, sky=800.0, pixscale=0.389,
                   gain=1.0, rdnoise=7.5, saturate=60000.0, event=None, source_flux=0.0,
                   header=None, compress=True, seed=None, beta=3.0, dither_seed=1,
                   sky_slope=(0.0, 0.0), cosmic_rays=(), bad_columns=(), nan_pixels=0):
    """Render one frame of ``stars`` through ``wcs`` and write it as an LCO-like FITS file.

    Parameters
    ----------
    path : str or Path
        Output file (``.fits.fz`` is tile-compressed in an ``SCI`` extension).
    stars : StarField
        The sky; row 0 is the target.
    mjd_start : float
        Exposure start (MJD UTC); fluxes are taken at mid-exposure.
    wcs : astropy.wcs.WCS
        The true mapping sky to pixels used to place the stars.
    header_wcs : astropy.wcs.WCS, optional
        The WCS written to the header (default ``wcs``); a slightly different one
        mimics an imperfect astrometric solution.
    header : astropy.io.fits.Header, optional
        Extra keys (the LCO ones, see :func:`simulate_dataset`).
    compress : bool
        RICE tile compression of float32 data with subtractive dithering and
        quantisation at 1/16 of the noise (adds ~0.03 % to the variance).
    sky_slope : tuple
        Sky gradient in ADU per pixel along x and y, rising from ``sky`` (moonlight).
    cosmic_rays : sequence of (x, y, adu)
        Cosmic-ray hits added after the noise: ``adu`` on the pixel nearest ``(x, y)`` and
        a third of it on one random neighbour (a short track).
    bad_columns : sequence of int
        Columns set to NaN (masked bad columns).
    nan_pixels : int
        Random pixels set to NaN.

    Returns
    -------
    x, y, flux : ndarray
        The true pixel positions (0-based) and deposited fluxes (ADU) of every star.
    """
    rng = np.random.default_rng(seed)
    mjd_mid = mjd_start + exptime / 2.0 / 86400.0
    flux = stars.fluxes_at(mjd_mid, event, source_flux) * transparency
    x, y = wcs.all_world2pix(stars.ra, stars.dec, 0)
    model = _render_moffat(shape, x, y, flux, fwhm_arcsec / pixscale, beta=beta)
    model += sky
    if np.any(sky_slope):
        gy, gx = np.mgrid[0:shape[0], 0:shape[1]]
        ramp = sky_slope[0] * gx + sky_slope[1] * gy
        model += ramp - ramp.min()     # the sky rises from its level: never below it
    electrons = rng.poisson(np.maximum(model, 0) * gain).astype(np.float64)
    electrons += rng.normal(0.0, rdnoise, shape)
    data = electrons / gain
    for cx, cy, adu in cosmic_rays:
        ix, iy = int(round(cx)), int(round(cy))
        if 1 <= ix < shape[1] - 1 and 1 <= iy < shape[0] - 1:
            data[iy, ix] += adu
            ox, oy = [(1, 0), (-1, 0), (0, 1), (0, -1)][rng.integers(4)]
            data[iy + oy, ix + ox] += adu / 3
    for col in bad_columns:
        data[:, col] = np.nan
    if nan_pixels:
        data[rng.integers(0, shape[0], nan_pixels), rng.integers(0, shape[1], nan_pixels)] = np.nan
    # The physical full well lies a little above the header's conservative SATURATE
    np.minimum(data, saturate * 1.02, out=data)
    data = data.astype(np.float32)
    hdr = fits.Header() if header is None else header.copy()
    hdr.update((header_wcs or wcs).to_header())
    hdr["BUNIT"] = ("adu", "Units of the data")
    path = Path(path)
    if compress:
        hdu = fits.CompImageHDU(data, hdr, name="SCI", compression_type="RICE_1",
                                quantize_level=16.0, quantize_method=1,
                                dither_seed=int(dither_seed))
    else:
        hdu = fits.ImageHDU(data, hdr, name="SCI")
    # as in LCO's own .fits.fz files, the primary HDU is bare: every key is in SCI
    primary = fits.PrimaryHDU()
    with atomic_write(path, "wb") as fh:
        fits.HDUList([primary, hdu]).writeto(fh)
    return x, y, flux


def simulate_dataset(folder, n_frames=60, *, target="OGLE-2026-BLG-0034", ra=269.7596,
                     dec=-28.2094, instrument="fa15", filter="ip", site="lsc", telescope="1m005",
                     event=None, source_flux=3.0e4, blend_flux=5.0e3, shape=(512, 512),
                     n_stars=150, seed=0, compress=True, start="2026-08-01T00:00:00",
                     cadence_hours=2.0, exptime=60.0, seeing=(1.3, 2.4), sky_range=(300.0, 1500.0),
                     transparency_range=(0.6, 1.0), jitter_arcsec=3.0, rotation_deg=0.1,
                     wcs_error_px=0.3, stars=None, first_frame_number=1,
                     header_offset_px=(0.0, 0.0), header_rotation_deg=0.0, pointing_only=(),
                     sky_gradient=0.0, cosmic_rays=0, target_hits=(), bad_columns=0,
                     nan_pixels=0, throughput=1.0, orientation_deg=0.0, zeropoint=None,
                     zeropoint_err=0.02, failed_zeropoints=()):
    """Write ``n_frames`` LCO-like frames of a microlensing event into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Where the frames go (created if needed).
    n_frames : int
        Number of frames, ``cadence_hours`` apart from ``start`` (UTC).
    target, ra, dec : str, float, float
        Target name and position (degrees), written as sexagesimal ``RA``/``DEC``.
    instrument, filter, site, telescope : str
        LCO names, used in the header and the file name
        (``{site}{telescope}-{instrument}-{DAY-OBS}-{number}-e91.fits.fz``).
    event : PaczynskiEvent, optional
        Default: peak in the middle of the series, ``u0=0.2``, ``tE=3`` days.
    source_flux, blend_flux : float
        Target flux (ADU per frame, transparency 1) of the lensed source and of the
        unlensed blend: ``F(t) = source_flux * A(t) + blend_flux``.
    shape : tuple
        Frame shape (ny, nx).
    n_stars : int
        Field stars (the target comes on top).
    seed : int
        Everything is reproducible from it.
    seeing, sky_range, transparency_range : tuple
        Per-frame FWHM (arcsec), sky (ADU) and transparency are drawn uniformly in these.
    jitter_arcsec, rotation_deg : float
        RMS pointing offset and rotation of each frame.
    wcs_error_px : float
        RMS offset of the header WCS from the truth, for centroid refinement to find.
    stars : StarField, optional
        Reuse a field (e.g. the same sky for several instruments and filters).
    header_offset_px : tuple
        Each header WCS is also shifted by a length drawn uniformly in this range (pixels),
        in a random direction: BANZAI fits that went wrong but say ``WCSERR = 0``.
    header_rotation_deg : float
        ... and rotated by up to this many degrees either way.
    pointing_only : sequence of int
        Frames whose header WCS is the telescope's pointing only: ``WCSERR = 4`` and the WCS
        100-250 px off (otherwise ``WCSERR = 0``).
    sky_gradient : float
        Sky range (ADU) across each frame, in a random direction (moonlight).
    cosmic_rays : int
        Cosmic-ray hits per frame at random places (500-20000 ADU).
    target_hits : sequence of int
        Frames with a cosmic ray inside the target's 3 arcsec aperture (1500-8000 ADU).
        ``meta["cr_near_target_px"]`` lists, per frame, the distance of every hit within
        10 arcsec of the target.
    bad_columns, nan_pixels : int
        NaN columns (never within 40 px of the target) and random NaN pixels per frame.
    throughput : float
        Scales every star's flux (a 0.4 m gets ~0.16 of a 1 m's); not in ``target_flux``.
    orientation_deg : float
        The camera's angle on the sky (the header WCS carries it).
    zeropoint : float, optional
        Write BANZAI's ``L1ZP``/``L1ZPERR``: a star's true magnitude is
        ``zeropoint - 2.5 log10(flux / exptime)`` (``flux`` of `StarField`, ADU at
        transparency 1), so frame ``i``'s zero point is ``zeropoint + 2.5 log10(transparency)``,
        written with a Gaussian error of ``zeropoint_err`` (its ``L1ZPERR``). None: no keys.
    failed_zeropoints : sequence of int
        Frames whose calibration failed: ``L1ZP = L1ZPERR = -99``, as BANZAI writes.

    Returns
    -------
    SimulationTruth

    Examples
    --------
    >>> truth = simulate_dataset("sim/data", n_frames=5, seed=1)  # doctest: +SKIP
    >>> truth.files[0].name  # doctest: +SKIP
    'lsc1m005-fa15-20260731-0001-e91.fits.fz'
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixscale, gain, rdnoise, saturate = _CAMERAS.get(instrument[:2], _CAMERAS["fa"])
    t_start = Time(start, scale="utc").mjd
    mjd_start = t_start + np.arange(n_frames) * cadence_hours / 24.0
    mjd_mid = mjd_start + exptime / 2.0 / 86400.0
    if event is None:
        event = PaczynskiEvent(t0=float(mjd_mid[0] + (mjd_mid[-1] - mjd_mid[0]) / 2.0), u0=0.2,
                               tE=3.0)
    if stars is None:
        size = 1.15 * max(shape) * pixscale
        stars = make_star_field(ra, dec, n_stars, size_arcsec=size,
                                target_flux=source_flux + blend_flux,
                                seed=int(rng.integers(2 ** 31)))
    fwhm = rng.uniform(*seeing, n_frames)
    skies = rng.uniform(*sky_range, n_frames)
    transp = rng.uniform(*transparency_range, n_frames)
    # the conditions draw from their own stream: a dataset with cosmic rays (say) has the same
    # stars, seeing and noise as the same seed without them
    crng = np.random.default_rng([int(seed), 11])
    files, xs, ys, fluxes, cr_near_target = [], [], [], [], []
    # its own generator: frames simulated without zero points stay byte-identical
    zp_noise = np.random.default_rng([seed, 14]).normal(0.0, zeropoint_err, n_frames)
    l1zp = [None] * n_frames
    cosd = np.cos(np.radians(dec))
    for i in range(n_frames):
        jx, jy = rng.normal(0.0, jitter_arcsec, 2) / 3600.0
        rot = orientation_deg + rng.normal(0.0, rotation_deg)
        true_wcs = _tan_wcs(ra + jx / cosd, dec + jy, shape, pixscale, rot)
        header_wcs = true_wcs.deepcopy()
        err = rng.normal(0.0, wcs_error_px, 2)
        lo, hi = (100.0, 250.0) if i in pointing_only else header_offset_px
        if hi > 0:
            phi = crng.uniform(0, 2 * np.pi)
            err += crng.uniform(lo, hi) * np.array([np.cos(phi), np.sin(phi)])
        header_wcs.wcs.crpix = header_wcs.wcs.crpix + err
        if header_rotation_deg:
            a = np.radians(crng.uniform(-header_rotation_deg, header_rotation_deg))
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            header_wcs.wcs.cd = header_wcs.wcs.cd @ rot
        tx, ty = (float(v[0]) for v in true_wcs.all_world2pix([ra], [dec], 0))
        slope = (0.0, 0.0)
        if sky_gradient:
            phi = crng.uniform(0, 2 * np.pi)
            slope = sky_gradient / max(shape) * np.array([np.cos(phi), np.sin(phi)])
        crs = [(crng.uniform(0, shape[1]), crng.uniform(0, shape[0]),
                float(np.exp(crng.uniform(np.log(500), np.log(2e4))))) for _ in range(cosmic_rays)]
        if i in target_hits:  # anywhere in a 3 arcsec aperture, evenly over its area
            r, phi = 0.95 * 3.0 / pixscale * np.sqrt(crng.uniform()), crng.uniform(0, 2 * np.pi)
            crs.append((tx + r * np.cos(phi), ty + r * np.sin(phi), crng.uniform(1500, 8000)))
        cr_near_target.append([round(float(np.hypot(cx - tx, cy - ty)), 2) for cx, cy, _ in crs
                               if np.hypot(cx - tx, cy - ty) < 10 / pixscale])
        cols = []
        if bad_columns:
            cols = [c for c in crng.integers(0, shape[1], 3 * bad_columns) if abs(c - tx) > 40]
            cols = cols[:bad_columns]
        number = first_frame_number + i
        airmass = 1.0 + rng.uniform(0.0, 0.8)
        hdr, day_obs = _header(target=target, ra=ra, dec=dec, filt=filter, instrument=instrument,
                               site=site, telescope=telescope, start=mjd_start[i],
                               exptime=exptime, pixscale=pixscale, gain=gain, rdnoise=rdnoise,
                               saturate=saturate, fwhm_arcsec=fwhm[i], sky=skies[i],
                               frame_number=number, filename="", airmass=airmass)
        name = lco_filename(site, telescope, instrument, day_obs, number, compress=compress)
        hdr["ORIGNAME"] = name.replace("-e91", "-e00").replace(".fz", "")
        hdr["WCSERR"] = (4 if i in pointing_only else 0, "Error status of WCS fit. 0 for no error")
        if zeropoint is not None:
            ok = i not in failed_zeropoints
            l1zp[i] = (zeropoint + 2.5 * np.log10(transp[i] * throughput) + zp_noise[i]
                       if ok else -99.0)
            hdr["L1ZP"] = (round(float(l1zp[i]), 5), "Instrumental zeropoint [mag]")
            hdr["L1ZPERR"] = (zeropoint_err if ok else -99.0, "Error on Instrumental zeropoint")
        path = folder / name
        x, y, flux = simulate_frame(path, stars, mjd_start=mjd_start[i], wcs=true_wcs,
                                    header_wcs=header_wcs, shape=shape, exptime=exptime,
                                    fwhm_arcsec=fwhm[i], transparency=transp[i] * throughput,
                                    sky=skies[i],
                                    pixscale=pixscale, gain=gain, rdnoise=rdnoise,
                                    saturate=saturate, event=event,
                                    source_flux=source_flux, header=hdr,
                                    compress=compress, seed=int(rng.integers(2 ** 31)),
                                    dither_seed=1 + (number % 9999), sky_slope=slope,
                                    cosmic_rays=crs, bad_columns=cols, nan_pixels=nan_pixels)
        files.append(path)
        xs.append(x)
        ys.append(y)
        fluxes.append(flux)
    star_flux = np.array(fluxes)
    log.info("simulated %d frames of %s (%s, %s) in %s", n_frames, target, instrument, filter,
             folder)
    return SimulationTruth(
        folder=folder, files=files, stars=stars, event=event, source_flux=source_flux,
        mjd_start=mjd_start, mjd_mid=mjd_mid, exptime=exptime, transparency=transp, sky=skies,
        fwhm_arcsec=fwhm, target_flux=star_flux[:, 0] / (transp * throughput),
        star_flux=star_flux,
        x=np.array(xs), y=np.array(ys), gain=gain, rdnoise=rdnoise, saturate=saturate,
        pixscale=pixscale,
        meta={"target": target, "ra": ra, "dec": dec, "instrument": instrument,
              "filter": filter, "site": site, "shape": shape, "blend_flux": blend_flux,
              "wcserr": [4 if i in pointing_only else 0 for i in range(n_frames)],
              "throughput": throughput,
              "target_hits": sorted(int(i) for i in target_hits),
              "zeropoint": zeropoint, "l1zp": l1zp,
              "cr_near_target_px": cr_near_target},
    )

