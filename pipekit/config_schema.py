"""Validate YAML mappings into dataclasses, driven by the dataclasses' field types.

The one validator behind `pipekit.config`: a field's type (``str``, ``float``, ``int``,
``bool``, ``Path``, ``datetime``, ``list[str]``, a nested dataclass, optional or not) says
how its YAML value is checked and converted, its ``metadata`` (made with `yaml_key`) adds the
YAML key, aliases and limits. Errors name the file, the dotted key, the value and what was
expected; a value that means "not set" (`is_unset`) is the same as a missing key.
"""

import dataclasses
import functools
import logging
import os
import re
import types
import typing
from datetime import datetime
from pathlib import Path

import yaml

from .errors import ConfigError
from .lco import parse_utc

__all__ = ["UNSET_STRINGS", "is_unset", "yaml_key", "NOT_IN_FILE", "MISSING", "Section", "build",
           "read_yaml", "refuse_seed_tom_config", "DATE_TIME", "DATE"]

log = logging.getLogger("pipekit.config")

#: What a YAML value says to mean "not set" (compared after ``strip().lower()``), besides
#: YAML's own null. The same rule for every optional key of every file. Narrower than
#: `pipekit.lco.NO_VALUE_STRINGS` on purpose: "N/A" or "-" in a header is noise, but in a
#: file a person wrote it may be a real value (a proposal, a label).
UNSET_STRINGS = frozenset({"", "none", "null", "~"})


def is_unset(value):
    """True when a YAML value means "not set": null, or ``none``/``null``/``~``/empty text.

    Examples
    --------
    >>> is_unset("None"), is_unset(None), is_unset("N/A")
    (True, True, False)
    """
    return value is None or (isinstance(value, str) and value.strip().lower() in UNSET_STRINGS)


def yaml_key(name=None, aliases=(), **checks):
    """Field metadata for the validator.

    Parameters
    ----------
    name : str, optional
        The YAML key, dotted for a nested one (``reduction_level.image``); default the
        field's name.
    aliases : tuple of str
        Other spellings accepted (the first one present is read).
    **checks
        ``minimum`` (numbers), ``choices`` (strings, compared in lower case), ``parse``
        (value -> result, None when invalid) and ``expected`` (the message's text).
    """
    return {"key": name, "aliases": tuple(aliases), **checks}


#: Metadata of fields the loader fills itself (never read from the file).
NOT_IN_FILE = {"in_file": False}

#: Expected-value texts of date-times and dates, for field metadata and messages.
DATE_TIME = "a UTC date-time 'YYYY-MM-DD HH:MM' or 'none'"
DATE = "a date 'YYYY-MM-DD' or 'none'"

#: A key absent from its mapping (not the same as a key set to ``none``).
MISSING = object()
_TRUE_FALSE = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class Section:
    """A mapping being validated: knows its file and dotted prefix for messages,
    and which keys were read, so unknown keys can be warned about once."""

    def __init__(self, source, data, prefix=""):
        self.source = source
        self.data = data
        self.prefix = prefix
        self.seen = set()
        self.children = {}

    def key(self, name):
        return f"{self.prefix}{name}"

    def fail(self, name, value, expected):
        if value is MISSING:
            raise ConfigError(f"{self.source}: required key '{self.key(name)}' is missing; "
                              f"expected {expected}")
        raise ConfigError(f"{self.source}: key '{self.key(name)}' = {value!r}: "
                          f"expected {expected}")

    def raw(self, name):
        self.seen.add(name)
        return self.data.get(name, MISSING)

    def section(self, name):
        """The sub-mapping ``name`` (empty when missing or not set)."""
        if name not in self.children:
            value = self.raw(name)
            if value is MISSING or is_unset(value):
                value = {}
            elif not isinstance(value, dict):
                self.fail(name, value, "a mapping of keys")
            self.children[name] = Section(self.source, value, f"{self.key(name)}.")
        return self.children[name]

    def unknown(self):
        """Warn about the keys nobody read (here and in sub-sections); return this level's."""
        extra = {k: v for k, v in self.data.items() if k not in self.seen}
        if extra:
            log.warning("%s: unknown key(s) %s ignored", self.source,
                        ", ".join(f"'{self.key(k)}'" for k in sorted(map(str, extra))))
        for child in self.children.values():
            child.unknown()
        return extra


@functools.lru_cache(maxsize=None)
def _hints(cls):
    # resolved once per class: a config has a dozen sections, each field asks
    return typing.get_type_hints(cls)


def _split_optional(hint):
    """(the type without None, whether None was allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def _expected(hint, meta):
    if "expected" in meta:
        return meta["expected"]
    kind, _ = _split_optional(hint)
    if "choices" in meta:
        return f"one of {sorted(meta['choices'])}"
    if dataclasses.is_dataclass(kind) or typing.get_origin(kind) is dict or kind is dict:
        return "a mapping of keys"
    text = {str: "a string", bool: "true or false", int: "an integer", float: "a number",
            Path: "a path", datetime: DATE_TIME}.get(kind)
    if typing.get_origin(kind) is list:
        text = "a list of strings"
    if "minimum" in meta:
        text += f" >= {meta['minimum']}"
    return text or f"a {getattr(kind, '__name__', kind)}"


def _coerce(section, name, value, hint, meta):
    """The value of one set key, converted to the field's type, or ConfigError."""
    kind, _ = _split_optional(hint)
    expected = _expected(hint, meta)
    bad = False
    if "parse" in meta:
        result = meta["parse"](value)
        bad = result is None
    elif dataclasses.is_dataclass(kind):
        return build(kind, section.section(name))
    elif typing.get_origin(kind) is dict or kind is dict:
        return dict(section.section(name).data)
    elif kind is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE_FALSE:
            value = _TRUE_FALSE[value.strip().lower()]
        result, bad = value, not isinstance(value, bool)
    elif kind in (int, float):
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
        bad = bad or (kind is int and value != int(value))
        result = None if bad else kind(value)
        bad = bad or ("minimum" in meta and result < meta["minimum"])
    elif kind is str:
        bad = isinstance(value, bool) or not isinstance(value, (str, int, float))
        result = str(value).strip()
        if "choices" in meta:
            result = result.lower()
            bad = bad or result not in meta["choices"]
    elif typing.get_origin(kind) is list:
        if isinstance(value, str):
            value = [value]
        bad = not isinstance(value, list) or not all(
            isinstance(v, (str, int)) and not isinstance(v, bool) and not is_unset(v)
            for v in value)
        result = None if bad else [str(v).strip() for v in value]
    elif kind is Path:
        if not isinstance(value, str):
            section.fail(name, value, "a path (string)")
        result = Path(os.path.expandvars(value.strip())).expanduser()
        if not result.is_absolute() and isinstance(section.source, Path):
            result = section.source.parent / result
        result = Path(os.path.normpath(result))
    elif kind is datetime:
        result = parse_utc(value)
        bad = result is None
    else:  # pragma: no cover - a field type the validator does not know is a bug here
        raise TypeError(f"config field {name}: no validation for type {hint!r}")
    if bad:
        section.fail(name, value, expected)
    return result


def build(cls, section, defaults=None, given=None):
    """Validate ``section`` against dataclass ``cls``; return the instance.

    Every field is read from the key of the same name (or ``metadata["key"]``, dotted for
    a nested mapping, and its aliases); a value that means "not set" (`is_unset`) is the
    same as a missing key: the field's default, or an error for a required field.
    ``defaults`` overrides fields' defaults (and makes them optional); ``given`` holds
    fields the caller has already (not read from the file). Unknown keys are
    left in ``section`` for `Section.unknown`; a field with ``metadata["extra"]`` gets them.
    """
    defaults = defaults or {}
    values, extra_field = dict(given or {}), None
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("extra"):
            extra_field = f.name
        if meta.get("in_file") is False or meta.get("extra") or f.name in values:
            continue
        hint = _hints(cls)[f.name]
        *parents, name = (meta.get("key") or f.name).split(".")
        sub = section
        for parent in parents:
            sub = sub.section(parent)
        name = next((k for k in (name, *meta.get("aliases", ())) if k in sub.data), name)
        value = sub.raw(name)
        if value is MISSING or is_unset(value):
            if f.name in defaults:
                values[f.name] = defaults[f.name]
            elif f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
            elif dataclasses.is_dataclass(_split_optional(hint)[0]) and value is MISSING:
                sub.fail(name, MISSING, "a mapping of keys")
            else:
                sub.fail(name, value, _expected(hint, meta))
            continue
        values[f.name] = _coerce(sub, name, value, hint, meta)
    instance = cls(**values)
    if extra_field:
        setattr(instance, extra_field,
                {k: v for k, v in section.data.items() if k not in section.seen})
    return instance


def read_yaml(path):
    """Read one YAML configuration file into a mapping, refusing its traps at load time.

    Refused, each with a `ConfigError` naming the file and the key: bytes that are not
    UTF-8 (with their position); a key given twice in one mapping (with both lines:
    YAML would silently keep the last); an unquoted sexagesimal value such as
    ``RA: 17:59:02.304``, which YAML 1.1 reads as the base-60 number 64742.304 (quote
    it); ``.nan`` and ``.inf`` values; and a literal secret (a key named ``password``,
    ``token``, ``api_key``, ``secret`` or ending in ``_password`` ...; its value is
    never repeated): secrets are read only from environment variables.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    (pathlib.Path, dict)
        The resolved path and the top-level mapping (empty for an empty file).

    Raises
    ------
    ConfigError
    """
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file ({exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(_not_utf8(path, raw, exc)) from None
    loader = _StrictLoader(text)
    loader.source = path
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from exc
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, "
                          f"found {type(data).__name__}")
    refuse_seed_tom_config(path, data)
    _refuse_literal_secrets(path, data, "")
    return path.resolve(), data


def refuse_seed_tom_config(source, data):
    """Refuse the existing pipeline's ``tom_config.yaml`` with one message saying how to migrate.

    Its ``tom_user_id``/``tom_password`` keys hold a literal password: checked before the
    general literal-secret refusal, so the user reads how to migrate, not only what is wrong.

    Raises
    ------
    ConfigError
        When ``data`` has ``tom_user_id`` or ``tom_password`` at the top level.
    """
    seed_keys = [k for k in ("tom_user_id", "tom_password") if k in data]
    if not seed_keys:
        return
    user = data.get("tom_user_id")
    user = repr(str(user)) if user is not None else "<your TOM user name>"
    url = data.get("url") or data.get("tom_url") or "<the TOM's URL>"
    # The password's value is never repeated: only the key's name.
    raise ConfigError(
        f"{source}: key(s) {', '.join(repr(k) for k in seed_keys)} are the existing "
        "microlensing pipeline's TOM config; pipekit reads the password only from an "
        "environment variable. To migrate, write this file as\n"
        f"  url: '{url}'\n  username: {user}\n  password_envvar: 'TOM_PASSWORD'\n"
        "(i.e. 'tom_user_id' becomes 'username', 'tom_password' is deleted), and before "
        "running pipekit export the password in that variable: export TOM_PASSWORD='...'. "
        "Any variable name works; 'password_envvar' names it.")


def _not_utf8(path, raw, exc):
    line_start = raw.rfind(b"\n", 0, exc.start) + 1
    line_end = raw.find(b"\n", exc.start)
    line = raw[line_start:line_end if line_end >= 0 else len(raw)].decode("utf-8", "replace")
    key = line.split(":", 1)[0].strip() if ":" in line else ""
    where = f", in the value of key '{key}'" if key and "\ufffd" not in key else ""
    number = raw.count(b"\n", 0, exc.start) + 1
    return (f"{path}: byte {exc.start} (0x{raw[exc.start]:02x}, line {number}{where}) is not "
            "UTF-8; save the file as UTF-8")


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_NON_FINITE = {".nan", ".inf", "+.inf", "-.inf"}
_SECRET_KEY_RE = re.compile(r"(^|_)(password|passwd|token|api_?key|apikey|secret)$", re.I)


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML's safe loader (libyaml's parser where PyYAML has it: a config is read on every
    run), refusing duplicate keys, base-60 numbers and NaN/inf."""

    source = "<config>"

    def construct_document(self, node):
        self._dotted = {}  # id(value node) -> its dotted key, for messages
        self._name_keys(node, "")
        return super().construct_document(node)

    def _name_keys(self, node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    dotted = f"{prefix}{key_node.value}"
                    self._dotted[id(value_node)] = dotted
                    self._name_keys(value_node, dotted + ".")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._name_keys(item, f"{prefix.rstrip('.')}[{index}].")

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                if key is not None and key in lines:
                    dotted = getattr(self, "_dotted", {}).get(id(value_node), key)
                    raise ConfigError(
                        f"{self.source}: key '{dotted}' is given twice, at lines {lines[key]} and "
                        f"{line}; YAML would silently keep the last one: keep one")
                lines.setdefault(key, line)
                self._check_value(getattr(self, "_dotted", {}).get(id(value_node), key),
                                  value_node)
        return super().construct_mapping(node, deep=deep)

    def _check_value(self, key, node):
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for item in items:
            if not isinstance(item, yaml.ScalarNode) or item.style:  # plain: None or ""
                continue  # quoted scalars are strings: nothing to refuse
            line = item.start_mark.line + 1
            if item.tag in (_INT_TAG, _FLOAT_TAG) and ":" in item.value:
                number = self.construct_object(item)
                raise ConfigError(
                    f"{self.source}: key '{key}' (line {line}): the unquoted value "
                    f"{item.value} is read by YAML as the base-60 number {number!r}, not as "
                    f"an angle or time; quote it: {key.rsplit('.', 1)[-1]}: '{item.value}'")
            if item.tag == _FLOAT_TAG and item.value.lower() in _NON_FINITE:
                raise ConfigError(
                    f"{self.source}: key '{key}' (line {line}): {item.value} is not a finite "
                    "number; give a finite value (or leave the key out for its default)")


def _refuse_literal_secrets(source, data, prefix):
    items = (data.items() if isinstance(data, dict)
             else enumerate(data) if isinstance(data, list) else ())
    for key, value in items:
        dotted = f"{prefix}{key}" if isinstance(data, dict) else f"{prefix[:-1]}[{key}]"
        if (isinstance(data, dict) and isinstance(key, str) and _SECRET_KEY_RE.search(key)
                and value is not None):  # the value is never repeated
            envkey = "password_envvar" if re.search(r"pass", key, re.I) else "token_envvar"
            raise ConfigError(f"{source}: key '{dotted}' holds a secret in the file; pipekit "
                              "reads secrets only from the environment: remove it, export the "
                              "value in an environment variable and name that variable in "
                              f"'{prefix}{envkey}'")
        if isinstance(value, (dict, list)):
            _refuse_literal_secrets(source, value, f"{dotted}.")


