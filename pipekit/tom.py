"""A client for the REST API of a TOM Toolkit (3.x) server.

It finds targets, uploads light curves as ``photometry`` data products and
reads the TOM's reduced data back. Passwords and tokens are read from the
environment at each request: they are never stored, logged or pickled.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

from .errors import ConfigError, TOMError
from .http import (Deadline, RetryableError, backoff_wait, call_with_retries, retry_after_seconds,
                   server_message)
from .lco import mjd_utc
from .secrets import register_envvar, scrub
# Re-exported: product ids and the uploaded CSV are public here since the first release.
from .tom_products import (LABEL_KEY, REDUCTION_VERSION_COLUMN, has_label, product_id_for,
                           with_reduction_version)

__all__ = ["TOMClient", "product_id_for", "REDUCTION_VERSION_COLUMN"]

log = logging.getLogger("pipekit.tom")

#: Retried responses: rate limiting and server-side failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Longest wait pipekit honours from a ``Retry-After`` header, in seconds.
MAX_RETRY_AFTER = 120.0
#: Default overall bound of one request or one paged listing (seconds).
MAX_SECONDS = 600.0
#: Default most pages read by one listing.
MAX_PAGES = 1000
#: Key of the JSON that TOM Toolkit returns (HTTP 500) when it cannot turn an
#: uploaded file into reduced data: the file is refused, asking again won't help.
_PROCESSING_ERROR_KEY = "Data processing error"


class TOMClient:
    """Talk to a TOM Toolkit server's REST API.

    Parameters
    ----------
    url : str
        The TOM's base URL, e.g. ``"https://mytom.example.org"`` (the API is
        under ``{url}/api/``).
    username : str, optional
        User name for HTTP Basic authentication (with ``password_envvar``).
    password_envvar : str, optional
        Name of the environment variable holding the password.
    token_envvar : str, optional
        Name of the environment variable holding an API token, sent as
        ``Authorization: Token <token>``. Takes precedence over Basic.
    timeout : float or (float, float)
        Connect and read timeouts in seconds, as for `requests`.
    retries : int
        Extra attempts after a connection error, a timeout, HTTP 429 (waiting
        as long as ``Retry-After`` says) or a 5xx answer.
    backoff : float
        The wait before the first retry in seconds; it doubles each time.
    groups : list of str, optional
        Default groups given access to uploaded data products.
    max_seconds : float or None
        Longest one request (with its retries) or one paged listing may take
        (s); past it a `TOMError` says so. None for no bound.
    max_pages : int
        Most pages one listing may read. A ``next`` link pointing at a page
        already read, or a page of only targets already seen, stops the
        listing at once.

    Notes
    -----
    Secrets are read from the environment when each request is made; the
    client holds only the variables' names, so it can be pickled into a
    pipeline checkpoint safely. With neither a token nor a password the
    requests are anonymous, and a TOM shows anonymous users only its public
    targets.

    Examples
    --------
    >>> tom = TOMClient("http://127.0.0.1:8000", token_envvar="TOM_TOKEN")  # doctest: +SKIP
    >>> target = tom.find_target("OGLE-2024-BLG-0001")                      # doctest: +SKIP
    >>> tom.upload_photometry(target["name"], "OGLE_ip_lc.csv", "pipekit_sinistro_ip")  # doctest: +SKIP
    """

    def __init__(self, url, username=None, password_envvar=None, token_envvar=None,
                 timeout=(5, 60), retries=3, backoff=0.5, groups=None,
                 max_seconds=MAX_SECONDS, max_pages=MAX_PAGES):
        url = str(url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"TOM url {url!r}: expected an http:// or https:// URL")
        if password_envvar and not username:
            raise ConfigError(f"TOM {url}: password_envvar {password_envvar!r} is set but no "
                              "username was given (HTTP Basic needs both)")
        if int(retries) < 0:
            raise ValueError(f"retries must be >= 0, not {retries!r}")
        self.url = url
        self.username = username
        self.password_envvar = password_envvar
        self.token_envvar = token_envvar
        register_envvar(token_envvar)
        register_envvar(password_envvar, username)
        self.timeout = timeout
        self.max_seconds = float(max_seconds) if max_seconds else None
        self.max_pages = int(max_pages)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.groups = list(groups or [])
        self._session = None

    @classmethod
    def from_config(cls, config, **kwargs):
        """A client for a `pipekit.config.TOMConfig` (a loaded ``tom_config.yaml``).

        Parameters
        ----------
        config : TOMConfig
        **kwargs
            Override the constructor's other arguments (``retries``, ...).

        Returns
        -------
        TOMClient
        """
        kwargs.setdefault("timeout", (5, float(getattr(config, "timeout", 60) or 60)))
        kwargs.setdefault("groups", getattr(config, "groups", None))
        kwargs.setdefault("max_seconds", getattr(config, "max_seconds", MAX_SECONDS))
        return cls(config.url, username=config.username,
                   password_envvar=config.password_envvar,
                   token_envvar=config.token_envvar, **kwargs)

    def __repr__(self):
        how = (f"token from ${self.token_envvar}" if self.token_envvar
               else f"user {self.username!r}, password from ${self.password_envvar}"
               if self.password_envvar else "anonymous")
        return f"TOMClient({self.url!r}, {how})"

    # A session holds sockets (and, in general, could hold credentials): it is
    # rebuilt after unpickling instead of travelling in a checkpoint.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def close(self):
        """Close the HTTP connections (a new request reopens them)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- transport ---------------------------------------------------------

    @property
    def session(self):
        """The `requests.Session` carrying the requests (made on first use)."""
        if self._session is None:
            self._session = requests.Session()
            self._session.headers["Accept"] = "application/json"
        return self._session

    def _secret(self, envvar, what):
        register_envvar(envvar, self.username if envvar == self.password_envvar else None)
        value = os.environ.get(envvar, "")
        if not value:
            raise ConfigError(f"TOM {self.url}: environment variable {envvar} (the {what}) is "
                              "not set or empty; export it before talking to the TOM")
        return value

    def _credentials(self):
        """``(headers, auth)`` for one request, read from the environment now."""
        if self.token_envvar:
            return {"Authorization": f"Token {self._secret(self.token_envvar, 'API token')}"}, None
        if self.password_envvar:
            return {}, (self.username, self._secret(self.password_envvar, "password"))
        return {}, None

    @staticmethod
    def _scrub(text):
        # The server should never echo a credential, but an error message is
        # the last place one may leak from: blank it (and its pieces) out.
        return scrub(text)

    def _url(self, path):
        return path if path.startswith(("http://", "https://")) else f"{self.url}/{path.lstrip('/')}"

    def _wait(self, attempt, response=None):
        delay = backoff_wait(attempt, self.backoff, MAX_RETRY_AFTER)
        if response is not None and response.status_code == 429:
            asked = retry_after_seconds(response.headers.get("Retry-After")) or 0.0
            delay = max(delay, min(asked, MAX_RETRY_AFTER))
        return delay

    def request(self, method, path, *, expected=(200,), params=None, data=None, files=None):
        """Send one API request, retrying transient failures.

        Parameters
        ----------
        method : str
            ``"GET"``, ``"POST"``, ``"DELETE"``, ...
        path : str
            Path under the TOM's URL (``"api/targets/"``) or a full URL.
        expected : tuple of int
            Status codes that count as success.
        params, data, files
            As for `requests.Session.request`. ``files`` must hold bytes, not
            open files, so that a retry sends the same content.

        Returns
        -------
        requests.Response

        Raises
        ------
        TOMError
            With the method, URL, status and the server's message, after the
            retries are spent or at once for any other unexpected status.
        """
        url = self._url(path)
        headers, auth = self._credentials()
        attempts = 0
        deadline = Deadline(getattr(self, "max_seconds", MAX_SECONDS), f"TOM {method} {url}")

        def attempt():
            nonlocal attempts
            deadline.check(TOMError, f"{attempts} attempt(s)")
            attempts += 1
            response = self.session.request(method, url, params=params, data=data,
                                            files=files, headers=headers, auth=auth,
                                            timeout=self.timeout)
            log.debug("TOM %s %s -> HTTP %d", method, response.url, response.status_code)
            if response.status_code in expected:
                return response
            if (response.status_code in RETRY_STATUSES and attempts <= self.retries
                    and not _is_processing_error(response)):
                raise RetryableError(f"HTTP {response.status_code}", response=response)
            raise TOMError(self._describe_failure(method, response, attempts))

        def announce(failure, index, delay):
            what = (type(failure.error).__name__ if failure.error is not None
                    else failure.reason)
            log.warning("TOM %s %s: %s; retrying in %.1f s (attempt %d of %d)", method, url,
                        what, delay, index + 1, self.retries + 1)

        try:
            return call_with_retries(
                attempt, self.retries,
                lambda index, failure: min(self._wait(index, failure.response),
                                           deadline.remaining()),
                announce)
        except RetryableError as exc:
            error = exc.error
        raise TOMError(f"TOM {method} {url}: no answer after {attempts} attempt(s): "
                       f"{type(error).__name__}: {self._scrub(str(error))}") from None

    def _describe_failure(self, method, response, attempts):
        what = {401: " (authentication failed: check the user name and the password or "
                     "token in their environment variables)",
                403: " (permission denied for this user)"}.get(response.status_code, "")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return self._scrub(f"TOM {method} {response.url}: HTTP {response.status_code} "
                           f"{response.reason}{what}{tries}: {_server_message(response)}")

    def _json(self, response):
        try:
            return response.json()
        except ValueError:
            raise TOMError(f"TOM {response.request.method} {response.url}: expected JSON, got "
                           f"{response.headers.get('Content-Type', 'no content type')}: "
                           f"{_server_message(response)}") from None

    def _get_all(self, path, params=None):
        """Every result of a list endpoint, following ``next`` to the end."""
        results, seen_pages, seen_ids = [], set(), set()
        url, query = path, dict(params or {})
        max_pages = getattr(self, "max_pages", MAX_PAGES)
        deadline = Deadline(getattr(self, "max_seconds", MAX_SECONDS), f"TOM listing {path}")
        while url:
            full = requests.Request("GET", self._url(url), params=query).prepare().url
            what = f"TOM listing {self._url(path)}: page {len(seen_pages) + 1} ({full})"
            if full in seen_pages:
                raise TOMError(f"{what}: its 'next' link points at a page already read; the "
                               "TOM's pagination loops")
            if len(seen_pages) >= max_pages:
                raise TOMError(f"{what}: stopped after {max_pages} pages, the most one listing "
                               "may read (max_pages); the TOM's pagination does not end")
            deadline.check(TOMError, f"{len(seen_pages)} pages read")
            seen_pages.add(full)
            payload = self._json(self.request("GET", url, params=query))
            if isinstance(payload, list):  # an unpaginated TOM
                return results + payload
            page = payload.get("results", []) if isinstance(payload, dict) else None
            if not isinstance(page, list):
                raise TOMError(f"{what}: expected a JSON object with a 'results' list")
            url, query = self._next_url(payload.get("next")), None  # ``next`` carries the query
            ids = [item.get("id") if isinstance(item, dict) else None for item in page]
            if url and not page:
                raise TOMError(f"{what}: an empty page with a 'next' link; the TOM's "
                               "pagination does not end")
            if page and all(i is not None and i in seen_ids for i in ids):
                raise TOMError(f"{what}: the page repeats only results already read; the "
                               "TOM's pagination loops")
            seen_ids.update(i for i in ids if i is not None)
            results.extend(page)
        return results

    def _next_url(self, link):
        """The server's ``next`` link, on this client's scheme and host.

        A TOM behind a proxy may write its links as ``http://`` (or with an
        internal port); the credentials must go only to the host they are for.
        """
        if not link:
            return None
        ours, theirs = urlsplit(self.url), urlsplit(link)
        if theirs.hostname and theirs.hostname != ours.hostname:
            raise TOMError(f"TOM {self.url}: refusing to follow a 'next' page link to another "
                           f"host ({theirs.hostname}); expected {ours.hostname}")
        return urlunsplit((ours.scheme, ours.netloc, theirs.path, theirs.query, ""))

    # ---- targets -----------------------------------------------------------

    def find_target(self, name):
        """The one target whose name or alias is ``name``.

        Parameters
        ----------
        name : str
            Compared with names and aliases without regard to case or
            surrounding blanks (the TOM's own search matches substrings; only
            whole-name matches count here).

        Returns
        -------
        dict
            The TOM's JSON for the target (``id``, ``name``, ``aliases``, ...).

        Raises
        ------
        TOMError
            When no target or several targets match, naming them.
        """
        wanted = str(name).strip().casefold()
        if not wanted:
            raise TOMError(f"TOM {self.url}: cannot look up a target with an empty name")
        candidates = self._get_all("api/targets/", {"name": str(name).strip()})
        matches = [t for t in candidates
                   if wanted in {str(n).strip().casefold() for n in _names(t)}]
        if not matches:
            near = ", ".join(repr(t.get("name")) for t in candidates[:5])
            raise TOMError(f"TOM {self.url}: no target named {name!r} (searched names and aliases"
                           f"{'; partial matches: ' + near if near else ''}); create it in the "
                           "TOM first, or check that this user may see it")
        if len(matches) > 1:
            listed = ", ".join(f"{t.get('name')!r} (id {t.get('id')})" for t in matches)
            raise TOMError(f"TOM {self.url}: {len(matches)} targets match {name!r}: {listed}; "
                           "expected exactly one")
        return matches[0]

    def get_target(self, target_id):
        """The TOM's JSON for the target with this id."""
        return self._json(self.request("GET", f"api/targets/{int(target_id)}/"))

    def _group_fields(self, groups):
        """Form fields naming the groups (by name or id) that may see a product."""
        if not groups:
            return {}
        known = {g.get("name"): g.get("id") for g in self._get_all("api/groups/")}
        fields = {}
        for i, group in enumerate(groups):
            if isinstance(group, int):
                gid = group
            elif group in known:
                gid = known[group]
            else:
                raise TOMError(f"TOM {self.url}: this user is not in a group named {group!r}; "
                               f"its groups are: {', '.join(map(repr, known)) or 'none'}")
            fields[f"groups[{i}]id"] = str(gid)
            if not isinstance(group, int):
                fields[f"groups[{i}]name"] = group
        return fields

    # ---- data products ---------------------------------------------------------

    def list_products(self, target_id, data_product_type=None):
        """The data products of one target.

        Parameters
        ----------
        target_id : int or dict
            The target's id, or its JSON from `find_target` (saves a request).
        data_product_type : str, optional
            Only products of this type (``"photometry"``, ...).

        Returns
        -------
        list of dict
            The TOM's JSON per product (``id``, ``product_id``, ``data``,
            ``extra_data``, ``data_product_type``, ...), newest first.

        Notes
        -----
        The TOM filters by target name on the server (``?target_name=``,
        which matches substrings and aliases); the exact target id and the
        product type are then checked here, as TOM Toolkit 3.1 ignores a
        type filter.
        """
        target = target_id if isinstance(target_id, dict) else self.get_target(target_id)
        params = {"target_name": target["name"]}
        if data_product_type:
            params["data_product_type"] = data_product_type
        products = self._get_all("api/dataproducts/", params)
        return [p for p in products if p.get("target") == target["id"]
                and (not data_product_type or p.get("data_product_type") == data_product_type)]

    def delete_product(self, product_pk):
        """Delete the data product with this id (the TOM's ``id``, not ``product_id``)."""
        self.request("DELETE", f"api/dataproducts/{int(product_pk)}/", expected=(200, 202, 204))
        log.info("TOM %s: deleted data product %s", self.url, product_pk)

    def upload_photometry(self, target_name, csv_path, data_label, groups=None):
        """Upload a light curve CSV as the target's ``photometry`` data product.

        Any older product of the same target with the same ``data_label`` is
        deleted, but only once the TOM has accepted the new one: a refused
        upload leaves the previous light curve in place.

        Parameters
        ----------
        target_name : str
            Name or alias of the target in the TOM (see `find_target`).
        csv_path : str or os.PathLike
            A CSV with a header row; the TOM reads ``time`` (MJD, UTC),
            ``filter``, ``magnitude``, ``error`` and ``limit``.
        data_label : str
            Names this light curve; a later upload with the same label replaces it.
        groups : list of str, optional
            Groups given access to the product (default: the client's ``groups``).

        Returns
        -------
        dict
            ``id`` (the TOM's key of the product), ``product_id``,
            ``target_id``, ``target_name``, ``data_label``, ``points`` (rows
            sent), ``already_existed`` (the same file was there already) and
            ``replaced`` (ids of the older products deleted).

        Raises
        ------
        TOMError
            The file is unreadable or has no ``time`` / magnitude column, the
            target is unknown or ambiguous (nothing is uploaded then), the TOM
            refused the file, or an older product could not be deleted.

        Notes
        -----
        The ``product_id`` is deterministic (`product_id_for`). The file goes
        up with one more column, ``reduction_version``, holding
        ``pipekit-<hash>``: the TOM silently drops points identical to points
        it already holds, so without it the points shared with the older
        product would vanish when that product is deleted.
        """
        csv_path = Path(csv_path)
        try:
            content = csv_path.read_bytes()
        except OSError as exc:
            raise TOMError(f"{csv_path}: cannot read the light curve to upload: {exc}") from None
        version = "pipekit-" + hashlib.sha256(content).hexdigest()[:16]
        upload, points = with_reduction_version(csv_path, content, version)
        target = self.find_target(target_name)
        product_id = product_id_for(target["name"], data_label, content)
        groups = self.groups if groups is None else list(groups)
        extra = {LABEL_KEY: data_label, "sha256": hashlib.sha256(content).hexdigest(),
                 "source_file": csv_path.name}
        form = {"target": str(target["id"]), "data_product_type": "photometry",
                "product_id": product_id, "extra_data": json.dumps(extra, sort_keys=True)}
        form.update(self._group_fields(groups))
        response = self.request("POST", "api/dataproducts/", expected=(200, 201), data=form,
                                files={"file": (csv_path.name, upload, "text/csv")})
        created = self._json(response)
        already = bool(created.get("already_exists")) or response.status_code == 200
        log.info("TOM %s: %s %s for %s (%d points, label %r)", self.url,
                 "found existing" if already else "uploaded", product_id, target["name"],
                 points, data_label)

        older = [p for p in self.list_products(target, "photometry")
                 if p.get("id") != created.get("id") and has_label(p, target["name"], data_label)]
        replaced, failed = [], []
        for product in older:
            try:
                self.delete_product(product["id"])
                replaced.append(product["id"])
            except TOMError as exc:
                failed.append(f"{product.get('product_id')} (id {product['id']}): {exc}")
        if failed:
            raise TOMError(f"TOM {self.url}: uploaded {product_id} for {target['name']!r}, but "
                           f"could not delete the older product(s) with label {data_label!r}: "
                           f"{'; '.join(failed)}; uploading again retries the deletion")
        return {"id": created.get("id"), "product_id": product_id, "target_id": target["id"],
                "target_name": target["name"], "data_label": data_label, "points": points,
                "already_existed": already, "replaced": replaced}

    # ---- reduced data ------------------------------------------------------

    def read_photometry(self, target_id, data_product_id=None):
        """The target's photometry as the TOM stores it (its reduced datums).

        Parameters
        ----------
        target_id : int or dict
            The target's id, or its JSON from `find_target`.
        data_product_id : int, optional
            Only the points from this data product (the TOM's ``id``).

        Returns
        -------
        list of dict
            One per point, sorted by time: ``mjd`` (UTC, from the TOM's
            timestamp), ``timestamp`` (ISO string as served), ``magnitude``,
            ``error``, ``filter``, ``limit``, ``telescope``, ``instrument``
            and ``source_name``.
        """
        target_id = target_id["id"] if isinstance(target_id, dict) else int(target_id)
        params = {"target__id": target_id, "data_type": "photometry"}
        if data_product_id is not None:
            params["data_product__id"] = int(data_product_id)
        points = []
        for datum in self._get_all("api/reduceddatums/", params):
            value = datum.get("value") or {}
            if not isinstance(value, dict):
                continue
            points.append({
                "mjd": _mjd(datum["timestamp"]),
                "timestamp": datum["timestamp"],
                "magnitude": value.get("brightness", value.get("magnitude")),
                "error": value.get("brightness_error", value.get("error")),
                "filter": value.get("bandpass", value.get("filter")),
                "limit": value.get("limit"),
                "telescope": value.get("telescope", ""),
                "instrument": value.get("instrument", ""),
                "source_name": datum.get("source_name", ""),
            })
        points.sort(key=lambda p: p["mjd"])
        return points


# ---- helpers ---------------------------------------------------------------

def _names(target):
    yield target.get("name", "")
    for alias in target.get("aliases") or []:
        yield alias.get("name", "") if isinstance(alias, dict) else alias


def _is_processing_error(response):
    if response.status_code != 500:
        return False
    try:
        return _PROCESSING_ERROR_KEY in response.json()
    except (ValueError, TypeError):
        return False


def _server_message(response, limit=600):
    return server_message(response, limit)


def _mjd(timestamp):
    """MJD (UTC) of an ISO timestamp as TOM Toolkit serves it (``...Z``)."""
    mjd = mjd_utc(timestamp)
    if mjd is None:
        raise TOMError(f"TOM timestamp {timestamp!r}: expected an ISO 8601 date-time")
    return mjd
