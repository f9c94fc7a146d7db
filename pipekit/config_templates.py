"""Write a dataset's ``reduction_config.yaml`` from a template, keeping its comments.

Re-exported by `pipekit.config`: ``from pipekit.config import write_reduction_config``.
"""

import json
import logging
from pathlib import Path

import yaml

from .atomic import write_text_new
from .errors import ConfigError
from .lco import parse_dec, parse_ra

__all__ = ["write_reduction_config", "template_path", "TEMPLATES"]

log = logging.getLogger("pipekit.config")

#: The folder of the templates shipped with pipekit (``pipekit init`` copies them).
TEMPLATES = Path(__file__).resolve().parent / "templates"


def template_path(name):
    """Path of a template shipped with pipekit, e.g. ``template_path("tom_config.yaml")``."""
    path = TEMPLATES / name
    if not path.exists():
        raise ConfigError(f"{path}: no such pipekit template")
    return path


# ---- writing a reduction config from a template ----------------------------------

def _yaml_scalar(value):
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid YAML double-quoted scalar
    return repr(float(value))


def _fill_target(text, values, source):
    """Set target.name/RA/Dec in the template's text, keeping every comment and other key.

    Values on existing lines are replaced in place (a trailing comment keeps its
    column); keys the template lacks are added to its ``target:`` block, or a new
    block is put at the top.
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    in_target = False
    target_at = None
    target_indent = None
    done = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            head, _, comment = stripped.partition(" #")
            in_target = head.startswith("target:")
            if in_target:
                target_at = i
                if head.strip() != "target:":  # flow style {name: ..}: rewrite as a block
                    lines[i] = "target:" + (f"  #{comment}" if comment else "") + "\n"
            continue
        if not in_target:
            continue
        if target_indent is None:
            target_indent = indent
        if indent != target_indent:
            continue
        key, sep, rest = stripped.partition(":")
        if not sep or key not in values:
            continue
        filled = f"{' ' * indent}{key}: {values[key]}"
        hash_at = line.find(" #", indent)
        if hash_at >= 0:
            # keep the comment in its column when the new value leaves room
            comment = line[hash_at + 1:].rstrip("\n")
            filled = filled.ljust(hash_at + 1) if len(filled) < hash_at else filled + "  "
            filled += comment
        lines[i] = filled + "\n"
        done.add(key)
    missing = [f"{' ' * (target_indent or 2)}{k}: {values[k]}\n" for k in values
               if k not in done]
    if missing and target_at is not None:
        lines[target_at + 1:target_at + 1] = missing
    elif missing:
        top = 0
        while top < len(lines) and (not lines[top].strip() or lines[top].startswith("#")):
            top += 1
        lines[top:top] = ["target:\n", *missing, "\n"]
    filled_text = "".join(lines)
    try:
        data = yaml.safe_load(filled_text)
        ok = isinstance(data, dict) and isinstance(data.get("target"), dict)
    except yaml.YAMLError:
        ok = False
    if not ok:
        raise ConfigError(f"{source}: cannot fill the target into this template; expected a "
                          "YAML mapping with a top-level 'target:' block (name, RA, Dec)")
    return filled_text


def write_reduction_config(path, target_name, ra, dec, template=None):
    """Write a dataset's ``reduction_config.yaml`` from a template, never overwriting.

    The template's comments and other settings are kept; only ``target.name``,
    ``target.RA`` and ``target.Dec`` are filled in.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write (its folder must exist).
    target_name : str
    ra, dec : float or str
        Degrees, or sexagesimal strings (RA in hours).
    template : str or os.PathLike, optional
        Default ``pipekit/templates/reduction_config.yaml``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ConfigError
        When ``path`` already exists (it is left untouched), the template
        lacks a target block, or the values are not valid coordinates.

    Examples
    --------
    >>> write_reduction_config("red/reduction_config.yaml", "OGLE-2024-BLG-0034",
    ...                        "17:59:27.05", "-28:36:10.2")  # doctest: +SKIP
    """
    path = Path(path)
    template = Path(template) if template else TEMPLATES / "reduction_config.yaml"
    if path.exists():
        raise ConfigError(f"{path}: already exists; pipekit never overwrites a reduction config")
    if parse_ra(ra) is None:
        raise ConfigError(f"{path}: target RA {ra!r} is not a right ascension "
                          "(expected hours 'HH:MM:SS.s' or degrees 0-360)")
    if parse_dec(dec) is None:
        raise ConfigError(f"{path}: target Dec {dec!r} is not a declination "
                          "(expected '+DD:MM:SS.s' or degrees -90..90)")
    if not str(target_name).strip():
        raise ConfigError(f"{path}: empty target name; expected the frames' OBJECT")
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{template}: cannot read reduction config template ({exc})") from exc
    values = {"name": _yaml_scalar(str(target_name).strip()), "RA": _yaml_scalar(ra),
              "Dec": _yaml_scalar(dec)}
    # Templates from the existing pipeline may spell the keys differently.
    present = {ln.strip().partition(":")[0] for ln in text.splitlines()}
    for canonical, alternatives in (("RA", ("ra",)), ("Dec", ("DEC", "dec"))):
        if canonical not in present:
            for alt in alternatives:
                if alt in present:
                    values[alt] = values.pop(canonical)
                    break
    text = _fill_target(text, values, template)
    try:
        write_text_new(path, text)
    except FileExistsError:  # created meanwhile by another process: theirs stands
        raise ConfigError(f"{path}: already exists; pipekit never overwrites a reduction "
                          "config") from None
    log.info("wrote %s for target %s", path, target_name)
    return path
