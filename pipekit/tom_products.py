"""TOM data products as pipekit makes them: deterministic ids, labels, the uploaded CSV.

Plain functions, no network: `pipekit.tom.TOMClient` uses them to upload a light curve
and to find the older product of the same label that the new one replaces.
"""

import csv
import hashlib
import io
import json
import re

from .errors import TOMError
from .lco import slug

__all__ = ["product_id_for", "label_prefix", "has_label", "with_reduction_version",
           "REDUCTION_VERSION_COLUMN", "LABEL_KEY"]

#: Column added to every uploaded CSV (see `pipekit.tom.TOMClient.upload_photometry`).
REDUCTION_VERSION_COLUMN = "reduction_version"
#: Key of a product's ``extra_data`` that holds its pipekit label.
LABEL_KEY = "pipekit_data_label"
_MAGNITUDE_COLUMNS = {"magnitude", "mag", "brightness", "limit"}


def product_id_for(target_name, data_label, content):
    """The deterministic ``product_id`` of a light curve upload.

    Parameters
    ----------
    target_name : str
        The TOM's name of the target.
    data_label : str
        The label that names this light curve (a newer upload with the same
        label replaces the older one).
    content : bytes
        The CSV file's content, as read from disk.

    Returns
    -------
    str
        ``pipekit_<target>_<label>_<hash>``, where ``<hash>`` is 16 hex digits
        of the SHA-256 of target, label and content: the same file uploaded
        twice for the same target and label has the same id, which the TOM
        recognises as already there.

    Examples
    --------
    >>> product_id_for("OGLE-2024-BLG-0001", "pipekit_sinistro_ip", b"time\\n")[:-16]
    'pipekit_OGLE-2024-BLG-0001_pipekit_sinistro_ip_'
    """
    digest = hashlib.sha256()
    for part in (str(target_name).encode(), str(data_label).encode(), content):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return f"{label_prefix(target_name, data_label)}{digest.hexdigest()[:16]}"


def label_prefix(target_name, data_label):
    """The ``product_id`` of every upload for this target and label, without its hash."""
    return f"pipekit_{slug(target_name)}_{slug(data_label)}_"


# Products uploaded before lco.slug became the one naming rule have ids made by this
# older rule (runs of other characters -> "-", at most 80 characters). A TOM never
# rewrites ids, so has_label keeps recognising them: such a product whose extra_data
# was edited is still found, and replaced, by the next upload of its label. A frozen,
# read-only format, not a second naming convention: nothing new is named with it.
def _legacy_label_prefix(target_name, data_label):
    def legacy(text):
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-")[:80] or "x"
    return f"pipekit_{legacy(target_name)}_{legacy(data_label)}_"


def has_label(product, target_name, data_label):
    """True when the TOM's ``product`` (its JSON) is pipekit's upload for this label.

    The label recorded in ``extra_data`` decides; a product whose ``extra_data`` was
    edited in the TOM is recognised by its ``product_id`` (current or older rule).
    """
    try:
        extra = json.loads(product.get("extra_data") or "{}")
    except ValueError:
        extra = None
    if isinstance(extra, dict) and LABEL_KEY in extra:
        return extra[LABEL_KEY] == data_label
    product_id = product.get("product_id") or ""
    return any(re.fullmatch(re.escape(prefix) + r"[0-9a-f]{16}", product_id)
               for prefix in {label_prefix(target_name, data_label),
                              _legacy_label_prefix(target_name, data_label)})


def with_reduction_version(csv_path, content, version):
    """The CSV with a ``reduction_version`` column added, and its number of rows."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TOMError(f"{csv_path}: expected a UTF-8 text CSV, found binary data") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    if not rows:
        raise TOMError(f"{csv_path}: empty file; expected a CSV with a header row "
                       "(time, filter, magnitude, error)")
    header = [c.strip() for c in rows[0]]
    missing = []
    if "time" not in header:
        missing.append("'time' (MJD)")
    if not _MAGNITUDE_COLUMNS & set(header):
        missing.append("'magnitude'")
    if missing:
        raise TOMError(f"{csv_path}: no column {' or '.join(missing)} in the header "
                       f"{','.join(header)!r}; expected time, filter, magnitude, error")
    if len(rows) < 2:
        raise TOMError(f"{csv_path}: header only, no light curve points to upload")
    if REDUCTION_VERSION_COLUMN in header:
        return content, len(rows) - 1
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header + [REDUCTION_VERSION_COLUMN])
    for row in rows[1:]:
        writer.writerow(row + [version])
    return out.getvalue().encode("utf-8"), len(rows) - 1
