"""Bit flags of one star in one frame (combine with ``|``, test with ``&``).

Set by `measure_frame` (per star and frame) and by the light curve (``NON_POSITIVE``);
`describe_flags` names the bits of a value.
"""

__all__ = ["OFF_FRAME", "EDGE", "SATURATED", "BAD_PIXELS", "SKY_POOR", "NON_POSITIVE",
           "COSMIC_RAY", "FLAGS", "describe_flags"]

OFF_FRAME = 1        #: centre outside the frame (or WCS failed): not measured
EDGE = 2             #: aperture or annulus within the edge margin or partly off the frame
SATURATED = 4        #: a pixel in the aperture at or above SATURATE
BAD_PIXELS = 8       #: a non-finite pixel in the aperture (counted as zero)
SKY_POOR = 16        #: fewer than `MIN_SKY_PIXELS` usable sky pixels in the annulus
NON_POSITIVE = 32    #: light curve only: normalised flux <= 0, so no magnitude
COSMIC_RAY = 64      #: a cosmic-ray hit inside the aperture (see `pipekit.photometry.cosmics`)

#: Flag names by bit.
FLAGS = {OFF_FRAME: "off_frame", EDGE: "edge", SATURATED: "saturated", BAD_PIXELS: "bad_pixels",
         SKY_POOR: "sky_poor", NON_POSITIVE: "non_positive",
         COSMIC_RAY: "cosmic_ray"}


def describe_flags(flags):
    """Names of the bits set in ``flags``.

    Parameters
    ----------
    flags : int
        A combination of the bits in `FLAGS`.

    Returns
    -------
    list of str

    Examples
    --------
    >>> describe_flags(6)
    ['edge', 'saturated']
    """
    flags = int(flags)
    return [name for bit, name in FLAGS.items() if flags & bit]
