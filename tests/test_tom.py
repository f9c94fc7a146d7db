"""Tests of pipekit.tom and the upload step.

The first half drives `TOMClient` against a scripted HTTP server on 127.0.0.1
(retries, auth headers, target matching, secrets). The second half, marked
``tom``, runs against a real TOM Toolkit 3.x started by the ``tom_server``
fixture (tests/tom_server/), and reads back what the TOM stored.
"""

import base64
import json
import logging
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import dill
import pytest

from pipekit.config import TOMConfig
from pipekit.errors import ConfigError, PipekitError, TOMError
from pipekit.tom import TOMClient, product_id_for

TOKEN_VAR = "PIPEKIT_TEST_TOM_TOKEN"
PASSWORD_VAR = "PIPEKIT_TEST_TOM_PASSWORD"


# ---- a scripted stand-in for the TOM --------------------------------------------

class ScriptedTOM:
    """A tiny threaded HTTP server on 127.0.0.1.

    ``routes[(method, path)]`` is a list of ``(status, json_body, headers)``:
    each request pops the first entry, the last one repeats. Every request is
    recorded as ``(method, path, query, headers, body)``.
    """

    def __init__(self):
        self.routes = {}
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                outer.requests.append((self.command, parts.path, parse_qs(parts.query),
                                       dict(self.headers), body))
                script = outer.routes.get((self.command, parts.path))
                if not script:
                    status, payload, headers = 404, {"detail": "Not found."}, {}
                else:
                    status, payload, headers = script.pop(0) if len(script) > 1 else script[0]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def calls(self, method, path):
        return [r for r in self.requests if r[0] == method and r[1] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_tom():
    server = ScriptedTOM()
    yield server
    server.close()


def page(*results):
    return {"count": len(results), "next": None, "previous": None, "results": list(results)}


TARGET = {"id": 7, "name": "OGLE-2024-BLG-0001", "aliases": [{"id": 1, "name": "KMT-2024-BLG-0100"}]}


def write_csv(path, rows, header="time,filter,magnitude,error"):
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def light_curve(n, start=60400.0, step=0.0137, mag0=16.2, filt="ip"):
    """n points with MJDs to 1e-6 d and magnitudes that all differ."""
    return [(round(start + i * step + 1e-6 * (i % 7), 6), filt, round(mag0 + 0.01 * ((i * 37) % 23), 4),
             round(0.004 + 0.0003 * (i % 5), 5)) for i in range(n)]


@pytest.fixture
def token_env(monkeypatch):
    secret = "tok-Zq81-never-show-me-4c2e"
    monkeypatch.setenv(TOKEN_VAR, secret)
    return secret


# ---- client logic against the scripted server ---------------------------------------

def test_upload_is_retried_after_a_500_and_sends_the_same_file(fake_tom, tmp_path, token_env):
    fake_tom.routes[("GET", "/api/targets/")] = [(200, page(TARGET), {})]
    fake_tom.routes[("GET", "/api/targets/7/")] = [(200, TARGET, {})]
    fake_tom.routes[("POST", "/api/dataproducts/")] = [
        (500, {"detail": "database is locked"}, {}),
        (201, {"id": 11, "product_id": "x", "target": 7}, {}),
    ]
    fake_tom.routes[("GET", "/api/dataproducts/")] = [(200, page(), {})]
    csv_path = write_csv(tmp_path / "lc.csv", light_curve(3))
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR, backoff=0.01)

    result = tom.upload_photometry("OGLE-2024-BLG-0001", csv_path, "pipekit_sinistro_ip")

    posts = fake_tom.calls("POST", "/api/dataproducts/")
    assert len(posts) == 2
    assert result["id"] == 11 and result["points"] == 3 and result["replaced"] == []
    first_file = posts[0][4].split(b"filename=")[1].split(b"--")[0]
    assert first_file == posts[1][4].split(b"filename=")[1].split(b"--")[0]
    assert b"60400.0" in first_file


def test_429_waits_as_long_as_retry_after_says(fake_tom, token_env):
    fake_tom.routes[("GET", "/api/targets/")] = [(429, {"detail": "slow down"}, {"Retry-After": "1"}),
                                                 (200, page(TARGET), {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR, backoff=0.01)
    start = time.monotonic()
    assert tom.find_target("OGLE-2024-BLG-0001")["id"] == 7
    assert time.monotonic() - start >= 0.95
    assert len(fake_tom.calls("GET", "/api/targets/")) == 2


def test_tom_processing_error_is_final_not_retried_and_nothing_deleted(fake_tom, tmp_path, token_env):
    fake_tom.routes[("GET", "/api/targets/")] = [(200, page(TARGET), {})]
    fake_tom.routes[("POST", "/api/dataproducts/")] = [
        (500, {"Data processing error": "There was an error in processing your DataProduct"}, {})]
    csv_path = write_csv(tmp_path / "lc.csv", light_curve(3))
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR, backoff=0.01)

    with pytest.raises(TOMError) as err:
        tom.upload_photometry("OGLE-2024-BLG-0001", csv_path, "lab")

    assert "HTTP 500" in str(err.value) and "Data processing error" in str(err.value)
    assert f"{fake_tom.url}/api/dataproducts/" in str(err.value)
    assert len(fake_tom.calls("POST", "/api/dataproducts/")) == 1
    assert not [r for r in fake_tom.requests if r[0] == "DELETE"]


def test_5xx_retries_run_out_with_an_error_naming_url_status_and_server_message(fake_tom, token_env):
    fake_tom.routes[("GET", "/api/targets/")] = [(503, {"detail": "maintenance until 04:00"}, {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR, retries=2, backoff=0.01)
    with pytest.raises(TOMError, match=r"HTTP 503 .*after 3 attempts: maintenance until 04:00") as err:
        tom.find_target("X")
    assert f"{fake_tom.url}/api/targets/?name=X" in str(err.value)
    assert len(fake_tom.calls("GET", "/api/targets/")) == 3


def test_unreachable_tom_is_retried_then_named_in_the_error():
    with socket_closed_port() as port:
        tom = TOMClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01, timeout=(0.5, 1))
        with pytest.raises(TOMError, match=rf"127.0.0.1:{port}/api/targets/.*after 3 attempt"):
            tom.find_target("X")


class socket_closed_port:
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self):
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc):
        return False


def test_find_target_takes_the_whole_name_match_among_substring_hits(fake_tom, token_env):
    other = {"id": 8, "name": "OGLE-2024-BLG-00012", "aliases": []}
    fake_tom.routes[("GET", "/api/targets/")] = [(200, page(other, TARGET), {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR)
    assert tom.find_target("OGLE-2024-BLG-0001")["id"] == 7
    assert tom.find_target(" kmt-2024-blg-0100 ")["id"] == 7  # alias, any case
    with pytest.raises(TOMError, match=r"no target named 'OGLE-2024-BLG-0002'.*partial matches"):
        tom.find_target("OGLE-2024-BLG-0002")


def test_find_target_refuses_an_ambiguous_name_listing_the_matches(fake_tom, token_env):
    twin = {"id": 9, "name": "Gaia24xyz", "aliases": [{"name": "OGLE-2024-BLG-0001"}]}
    fake_tom.routes[("GET", "/api/targets/")] = [(200, page(TARGET, twin), {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR)
    with pytest.raises(TOMError, match=r"2 targets match .*\(id 7\).*'Gaia24xyz' \(id 9\)"):
        tom.find_target("OGLE-2024-BLG-0001")


def test_find_target_follows_pagination(fake_tom, token_env):
    second = f"{fake_tom.url}/api/targets/page2/"
    fake_tom.routes[("GET", "/api/targets/")] = [
        (200, {"count": 2, "next": second, "previous": None,
               "results": [{"id": 1, "name": "OGLE-2024-BLG-00011"}]}, {})]
    fake_tom.routes[("GET", "/api/targets/page2/")] = [(200, page(TARGET), {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR)
    assert tom.find_target("OGLE-2024-BLG-0001")["id"] == 7


def test_next_links_to_another_host_are_refused(fake_tom, token_env):
    fake_tom.routes[("GET", "/api/targets/")] = [
        (200, {"count": 2, "next": "http://evil.example.org/api/targets/?offset=1", "previous": None,
               "results": [TARGET]}, {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR)
    with pytest.raises(TOMError, match="another host"):
        tom.find_target("OGLE-2024-BLG-0001")


def test_secrets_are_read_from_the_environment_at_each_request(fake_tom, monkeypatch):
    fake_tom.routes[("GET", "/api/targets/")] = [(200, page(TARGET), {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR)
    monkeypatch.setenv(TOKEN_VAR, "first-token")
    tom.find_target("OGLE-2024-BLG-0001")
    monkeypatch.setenv(TOKEN_VAR, "second-token")
    tom.find_target("OGLE-2024-BLG-0001")
    basic = TOMClient(fake_tom.url, username="observer", password_envvar=PASSWORD_VAR)
    monkeypatch.setenv(PASSWORD_VAR, "pw-1")
    basic.find_target("OGLE-2024-BLG-0001")

    sent = [r[3].get("Authorization") for r in fake_tom.calls("GET", "/api/targets/")]
    assert sent == ["Token first-token", "Token second-token",
                    "Basic " + base64.b64encode(b"observer:pw-1").decode()]


def test_unset_secret_variable_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.delenv(TOKEN_VAR, raising=False)
    tom = TOMClient("http://127.0.0.1:9", token_envvar=TOKEN_VAR)
    with pytest.raises(ConfigError, match=TOKEN_VAR):
        tom.find_target("X")


def test_secret_never_in_pickle_repr_logs_or_error_text(fake_tom, token_env, caplog):
    # A hostile or buggy server echoing the credential back in its error body.
    fake_tom.routes[("GET", "/api/targets/")] = [(400, {"detail": f"bad header Token {token_env}"}, {})]
    fake_tom.routes[("GET", "/api/targets/1/")] = [(401, {"detail": "Invalid token."}, {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR, backoff=0.01)
    caplog.set_level(logging.DEBUG)
    errors = []
    for call in (lambda: tom.find_target("X"), lambda: tom.get_target(1)):
        with pytest.raises(TOMError) as err:
            call()
        errors.append(str(err.value))

    assert "***" in errors[0]
    assert "authentication failed" in errors[1]
    for text in errors + [caplog.text, repr(tom)]:
        assert token_env not in text
    for blob in (pickle.dumps(tom), dill.dumps(tom)):
        assert token_env.encode() not in blob
    assert pickle.loads(pickle.dumps(tom)).token_envvar == TOKEN_VAR


def test_csv_without_time_or_magnitude_is_refused_before_any_request(fake_tom, tmp_path, token_env):
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR)
    no_time = write_csv(tmp_path / "a.csv", [(1, "ip", 16.0, 0.01)], header="jd,filter,magnitude,error")
    no_mag = write_csv(tmp_path / "b.csv", [(60000.1, "ip", 0.01)], header="time,filter,error")
    with pytest.raises(TOMError, match=r"a.csv: no column 'time' \(MJD\)"):
        tom.upload_photometry("OGLE-2024-BLG-0001", no_time, "lab")
    with pytest.raises(TOMError, match=r"b.csv: no column 'magnitude'"):
        tom.upload_photometry("OGLE-2024-BLG-0001", no_mag, "lab")
    with pytest.raises(TOMError, match=r"missing.csv: cannot read"):
        tom.upload_photometry("OGLE-2024-BLG-0001", tmp_path / "missing.csv", "lab")
    assert fake_tom.requests == []


def test_only_older_products_with_the_same_label_are_deleted_after_acceptance(fake_tom, tmp_path,
                                                                              token_env):
    content = write_csv(tmp_path / "lc.csv", light_curve(4)).read_bytes()
    pid = product_id_for(TARGET["name"], "lab_ip", content)
    same_label = {"id": 3, "product_id": "older", "target": 7, "data_product_type": "photometry",
                  "extra_data": json.dumps({"pipekit_data_label": "lab_ip"})}
    other_label = {"id": 4, "product_id": "other", "target": 7, "data_product_type": "photometry",
                   "extra_data": json.dumps({"pipekit_data_label": "lab_ip_2"})}
    other_target = {"id": 5, "product_id": "t8", "target": 8, "data_product_type": "photometry",
                    "extra_data": json.dumps({"pipekit_data_label": "lab_ip"})}
    new = {"id": 12, "product_id": pid, "target": 7, "data_product_type": "photometry",
           "extra_data": json.dumps({"pipekit_data_label": "lab_ip"})}
    fake_tom.routes[("GET", "/api/targets/")] = [(200, page(TARGET), {})]
    fake_tom.routes[("POST", "/api/dataproducts/")] = [(201, new, {})]
    fake_tom.routes[("GET", "/api/dataproducts/")] = [
        (200, page(new, same_label, other_label, other_target), {})]
    fake_tom.routes[("DELETE", "/api/dataproducts/3/")] = [(204, {}, {})]
    tom = TOMClient(fake_tom.url, token_envvar=TOKEN_VAR)

    result = tom.upload_photometry(TARGET["name"], tmp_path / "lc.csv", "lab_ip")

    assert result["replaced"] == [3] and result["product_id"] == pid
    methods = [(r[0], r[1]) for r in fake_tom.requests]
    assert methods.index(("POST", "/api/dataproducts/")) < methods.index(("DELETE", "/api/dataproducts/3/"))
    assert [r[1] for r in fake_tom.requests if r[0] == "DELETE"] == ["/api/dataproducts/3/"]
    post = fake_tom.calls("POST", "/api/dataproducts/")[0][4]
    assert pid.encode() in post and b"time,filter,magnitude,error,reduction_version" in post


def test_product_id_is_deterministic_and_depends_on_target_label_and_content():
    a = product_id_for("T", "lab", b"time,magnitude\n1,2\n")
    assert a == product_id_for("T", "lab", b"time,magnitude\n1,2\n")
    assert a.startswith("pipekit_T_lab_") and len(a) == len("pipekit_T_lab_") + 16
    assert len({a, product_id_for("T", "lab", b"time,magnitude\n1,3\n"),
                product_id_for("T", "lab2", b"time,magnitude\n1,2\n"),
                product_id_for("U", "lab", b"time,magnitude\n1,2\n")}) == 4


def test_product_ids_use_the_lco_slug_and_older_ids_stay_findable():
    from pipekit.tom_products import has_label

    assert product_id_for("GJ 3470", "my label", b"x").startswith("pipekit_GJ_3470_my_label_")
    # An id of the older rule ("-" for other characters), extra_data edited away in the TOM:
    legacy = {"product_id": "pipekit_GJ-3470_my-label_0123456789abcdef", "extra_data": ""}
    assert has_label(legacy, "GJ 3470", "my label")
    assert not has_label(legacy, "GJ 3470", "other label")
    current = {"product_id": product_id_for("GJ 3470", "my label", b"x")}
    assert has_label(current, "GJ 3470", "my label")


def test_from_config_takes_url_credentials_names_groups_and_timeout():
    config = TOMConfig(url="https://tom.example.org", username="obs", password_envvar="TOM_PW",
                       groups=["team"], timeout=12.0)
    tom = TOMClient.from_config(config, retries=1)
    assert (tom.url, tom.username, tom.password_envvar, tom.token_envvar) == (
        "https://tom.example.org", "obs", "TOM_PW", None)
    assert tom.groups == ["team"] and tom.timeout == (5, 12.0) and tom.retries == 1


def test_client_refuses_a_password_variable_without_a_user_name():
    with pytest.raises(ConfigError, match="username"):
        TOMClient("https://tom.example.org", password_envvar="TOM_PW")


def test_upload_step_is_skipped_when_upload_is_false(tmp_path):
    from pipekit.steps import upload

    red_dir = tmp_path / "OGLE-2024-BLG-0001" / "sinistro" / "ip"
    red_dir.mkdir(parents=True)
    (red_dir / "reduction_config.yaml").write_text(
        "target: {name: OGLE-2024-BLG-0001, RA: '17:54:00.0', Dec: '-29:45:00'}\n"
        "tom: {upload: false}\n")
    assert upload(red_dir) == {"status": "success", "skipped": True, "reason": "tom.upload is false"}


# ---- against a real TOM Toolkit -------------------------------------------------------

@pytest.fixture
def tom(tom_server, monkeypatch):
    """A token-authenticated client of the real TOM."""
    monkeypatch.setenv(TOKEN_VAR, tom_server.token)
    return TOMClient(tom_server.url, token_envvar=TOKEN_VAR, backoff=0.05)


def real_tom(func):
    """A test against the real TOM (its server takes some 30 s to set up: slow)."""
    return pytest.mark.slow(pytest.mark.tom(func))


def labelled(tom, target, label):
    return [p for p in tom.list_products(target, "photometry")
            if json.loads(p["extra_data"]).get("pipekit_data_label") == label]


def assert_same_points(stored, rows):
    """The TOM's points equal the CSV rows: time to 1e-8 d (~1 ms), mag and error to 1e-9."""
    assert len(stored) == len(rows)
    for point, (mjd, filt, mag, err) in zip(stored, sorted(rows)):
        assert point["mjd"] == pytest.approx(mjd, abs=1e-8)
        assert point["magnitude"] == pytest.approx(mag, abs=1e-9)
        assert point["error"] == pytest.approx(err, abs=1e-9)
        assert point["filter"] == filt


@real_tom
def test_uploaded_light_curve_reads_back_point_for_point(tom, tmp_path):
    rows = light_curve(40)
    csv_path = write_csv(tmp_path / "PK-ROUNDTRIP_ip_lc.csv", rows)

    result = tom.upload_photometry("PK-ROUNDTRIP", csv_path, "pipekit_sinistro_ip")

    assert result["points"] == 40 and not result["already_existed"]
    assert_same_points(tom.read_photometry(result["target_id"], data_product_id=result["id"]), rows)
    assert_same_points(tom.read_photometry(result["target_id"]), rows)


@real_tom
def test_second_upload_with_the_same_label_leaves_one_product_holding_every_new_point(tom, tmp_path):
    target = tom.find_target("PK-REPLACE")
    first = light_curve(30)
    # The re-reduction shares 25 points with the first, changes one and adds 6.
    second = first[:25] + [(first[25][0], "ip", first[25][2] + 0.05, first[25][3])] + light_curve(
        6, start=60401.0)
    r1 = tom.upload_photometry("PK-REPLACE", write_csv(tmp_path / "a.csv", first), "pipekit_ip")
    r2 = tom.upload_photometry("PK-REPLACE", write_csv(tmp_path / "b.csv", second), "pipekit_ip")

    assert r2["replaced"] == [r1["id"]] and r2["product_id"] != r1["product_id"]
    assert [p["id"] for p in labelled(tom, target, "pipekit_ip")] == [r2["id"]]
    assert_same_points(tom.read_photometry(target), second)

    r3 = tom.upload_photometry("PK-REPLACE", tmp_path / "b.csv", "pipekit_ip")
    assert r3["already_existed"] and r3["id"] == r2["id"] and r3["replaced"] == []
    assert [p["id"] for p in labelled(tom, target, "pipekit_ip")] == [r2["id"]]
    assert_same_points(tom.read_photometry(target), second)


@real_tom
def test_products_with_different_labels_are_kept_side_by_side(tom, tmp_path):
    target = tom.find_target("PK-LABELS")
    ip, gp = light_curve(10, filt="ip"), light_curve(10, filt="gp", mag0=17.1)
    tom.upload_photometry("PK-LABELS", write_csv(tmp_path / "ip.csv", ip), "pipekit_sinistro_ip")
    tom.upload_photometry("PK-LABELS", write_csv(tmp_path / "gp.csv", gp), "pipekit_sinistro_gp",
                          groups=["pipekit-team"])
    assert len(tom.list_products(target, "photometry")) == 2
    stored = tom.read_photometry(target)
    assert_same_points([p for p in stored if p["filter"] == "ip"], ip)
    assert_same_points([p for p in stored if p["filter"] == "gp"], gp)


@real_tom
def test_upload_for_an_unknown_target_fails_clearly_and_changes_nothing(tom, tmp_path):
    before = tom._get_all("api/dataproducts/")
    csv_path = write_csv(tmp_path / "lc.csv", light_curve(5))
    with pytest.raises(TOMError, match=r"no target named 'PK-NOBODY'"):
        tom.upload_photometry("PK-NOBODY", csv_path, "pipekit_ip")
    assert tom._get_all("api/dataproducts/") == before


@real_tom
def test_alias_finds_the_target(tom):
    assert tom.find_target("KMT-2024-BLG-0100")["name"] == "OGLE-2024-BLG-0001"


@real_tom
def test_rejected_upload_leaves_the_previous_product_in_place(tom, tmp_path):
    target = tom.find_target("PK-REJECT")
    good = light_curve(12)
    r1 = tom.upload_photometry("PK-REJECT", write_csv(tmp_path / "good.csv", good), "pipekit_ip")
    # Passes pipekit's header check; the TOM cannot read 'yesterday' as an MJD.
    bad = write_csv(tmp_path / "bad.csv", [("yesterday", "ip", 16.0, 0.01)])

    with pytest.raises(TOMError, match=r"HTTP 500.*Data processing error") as err:
        tom.upload_photometry("PK-REJECT", bad, "pipekit_ip")

    assert "/api/dataproducts/" in str(err.value)
    assert [p["id"] for p in labelled(tom, target, "pipekit_ip")] == [r1["id"]]
    assert_same_points(tom.read_photometry(target), good)


@real_tom
def test_token_and_basic_auth_both_work_and_a_wrong_password_is_refused(tom_server, monkeypatch):
    monkeypatch.setenv(TOKEN_VAR, tom_server.token)
    monkeypatch.setenv(PASSWORD_VAR, tom_server.password)
    by_token = TOMClient(tom_server.url, token_envvar=TOKEN_VAR)
    by_password = TOMClient(tom_server.url, username=tom_server.username, password_envvar=PASSWORD_VAR)
    assert by_token.find_target("PK-AUTH")["id"] == by_password.find_target("PK-AUTH")["id"]

    monkeypatch.setenv(PASSWORD_VAR, "not-the-password")
    with pytest.raises(TOMError, match=r"HTTP 401 .*authentication failed") as err:
        by_password.find_target("PK-AUTH")
    assert "not-the-password" not in str(err.value)
    # Anonymous users do not see private targets: a clear "no target", not a crash.
    with pytest.raises(TOMError, match="no target named 'PK-AUTH'"):
        TOMClient(tom_server.url).find_target("PK-AUTH")


@real_tom
def test_real_tom_secrets_stay_out_of_logs_errors_and_pickles(tom_server, tmp_path, monkeypatch,
                                                              caplog):
    monkeypatch.setenv(TOKEN_VAR, tom_server.token)
    monkeypatch.setenv(PASSWORD_VAR, tom_server.password)
    caplog.set_level(logging.DEBUG)
    texts = []
    for tom in (TOMClient(tom_server.url, token_envvar=TOKEN_VAR),
                TOMClient(tom_server.url, username=tom_server.username, password_envvar=PASSWORD_VAR)):
        tom.upload_photometry("PK-SECRET", write_csv(tmp_path / "lc.csv", light_curve(5)), "lab")
        for call in (lambda: tom.find_target("PK-NOBODY"),
                     lambda: tom.upload_photometry("PK-SECRET", write_csv(
                         tmp_path / "bad.csv", [("x", "ip", 1, 1)]), "lab"),
                     lambda: tom.delete_product(999999)):
            with pytest.raises(PipekitError) as err:
                call()
            texts.append(str(err.value))
        texts.append(repr(tom))
        for blob in (pickle.dumps(tom), dill.dumps(tom)):
            for secret in (tom_server.token, tom_server.password):
                assert secret.encode() not in blob
    texts.append(caplog.text)
    for text in texts:
        assert tom_server.token not in text and tom_server.password not in text


@real_tom
def test_upload_step_sends_the_dataset_light_curve_under_a_per_dataset_label(tom_server, tmp_path,
                                                                              monkeypatch):
    from pipekit.steps import upload

    monkeypatch.setenv(TOKEN_VAR, tom_server.token)
    (tmp_path / "tom_config.yaml").write_text(f"url: {tom_server.url}\ntoken_envvar: {TOKEN_VAR}\n")
    red_dir = tmp_path / "PK-STEP" / "sinistro" / "ip"
    red_dir.mkdir(parents=True)
    (red_dir / "reduction_config.yaml").write_text(
        "target: {name: PK-STEP, RA: '17:54:40.8', Dec: '-29:48:36'}\n"
        "tom: {upload: true, config_file: ../../../tom_config.yaml, data_label: mylabel}\n")
    rows = light_curve(8)
    write_csv(red_dir / "PK-STEP_ip_lc.csv", rows)

    result = upload(red_dir)

    assert result["status"] == "success" and result["skipped"] is False
    assert result["data_label"] == "mylabel_sinistro_ip" and result["points"] == 8
    tom = TOMClient(tom_server.url, token_envvar=TOKEN_VAR)
    assert_same_points(tom.read_photometry(result["target_id"], data_product_id=result["product"]), rows)
    again = upload(red_dir)
    assert again["already_existed"] and again["product"] == result["product"]


def test_upload_step_without_light_curve_points_reports_error_or_skips(tmp_path):
    from pipekit.steps import upload

    (tmp_path / "tom_config.yaml").write_text(f"url: http://127.0.0.1:9\ntoken_envvar: {TOKEN_VAR}\n")
    red_dir = tmp_path / "PK-STEP" / "sinistro" / "rp"
    red_dir.mkdir(parents=True)
    (red_dir / "reduction_config.yaml").write_text(
        "target: {name: PK-STEP, RA: 268.67, Dec: -29.81}\n"
        "tom: {upload: true, config_file: ../../../tom_config.yaml}\n")
    result = upload(red_dir)
    assert result["status"] == "error" and "PK-STEP_rp_lc.csv" in result["error"]

    # A light curve whose points were all flagged: nothing to publish, no request made.
    write_csv(red_dir / "PK-STEP_rp_lc.csv", [])
    result = upload(red_dir)
    assert result["status"] == "success" and result["skipped"] is True
    assert "no points" in result["reason"]
