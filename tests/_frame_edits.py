"""Damage done to simulated frames on purpose, shared by the photometry and light-curve tests."""

from astropy.io import fits

_WCS_KEYS = ("CTYPE", "CRVAL", "CRPIX", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CUNIT")


def strip_wcs(path):
    """Rewrite the ``.fits.fz`` frame at ``path`` without the WCS keys of its SCI header."""
    with fits.open(path) as hdul:
        hdr = hdul["SCI"].header.copy()
        data = hdul["SCI"].data
    for key in list(hdr):
        if key[:5] in _WCS_KEYS:
            del hdr[key]
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, hdr, name="SCI")]).writeto(
        path, overwrite=True)
