"""Config traps refused at load time, naming the file and the key.

A duplicated key (YAML keeps the last silently), an unquoted sexagesimal angle (YAML 1.1
reads ``17:59:02.304`` as the base-60 number 64742.304 and ``1:30`` as 90), ``.nan`` and
``.inf`` (``detection_sigma: .inf`` would poison the reference star list), and a byte that
is not UTF-8 each give a `ConfigError` before anything runs.
"""

import pytest

from pipekit.config import load_reduction_config
from pipekit.errors import ConfigError

TARGET = "target: {name: T1, RA: '10:00:00', Dec: '+10:00:00'}\n"


def _load(tmp_path, text, data=None):
    path = tmp_path / "reduction_config.yaml"
    if data is None:
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_reduction_config(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_a_valid_config_still_loads(tmp_path):
    path = tmp_path / "reduction_config.yaml"
    path.write_text("target:\n  name: T1\n  RA: '17:59:02.304'\n  Dec: '-29:30:00'\n"
                    "photometry:\n  detection_sigma: 4.5\n")
    config = load_reduction_config(path)
    assert config.target.ra == pytest.approx(269.7596, abs=1e-3)


def test_a_duplicated_key_names_the_key_and_both_lines(tmp_path):
    message = _load(tmp_path, "target:\n  name: T1\n  RA: '10:00:00'\n  Dec: '+10:00:00'\n"
                              "  name: T2\n")
    assert "'target.name'" in message and "lines 2 and 5" in message


def test_a_duplicated_top_level_section_is_refused(tmp_path):
    message = _load(tmp_path, TARGET + "photometry: {detection_sigma: 4}\n"
                              "photometry: {detection_sigma: 6}\n")
    assert "'photometry'" in message and "lines 2 and 3" in message


@pytest.mark.parametrize("text, number", [("17:59:02.304", "64742.304"), ("1:30", "90")])
def test_an_unquoted_sexagesimal_says_to_quote_it(tmp_path, text, number):
    message = _load(tmp_path, f"target:\n  name: T1\n  RA: {text}\n  Dec: '+10:00:00'\n")
    assert "'target.RA'" in message and number in message and "quote it" in message
    assert f"RA: '{text}'" in message


def test_an_unquoted_negative_sexagesimal_dec_is_refused(tmp_path):
    message = _load(tmp_path, "target:\n  name: T1\n  RA: '10:00:00'\n  Dec: -29:30:00\n")
    assert "'target.Dec'" in message and "quote it" in message


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", ".NaN", "+.Inf"])
def test_nan_and_inf_name_the_key(tmp_path, value):
    message = _load(tmp_path, TARGET + f"photometry:\n  detection_sigma: {value}\n")
    assert "'photometry.detection_sigma'" in message and "line 3" in message and "finite" in message


def test_inf_inside_a_list_names_the_key(tmp_path):
    message = _load(tmp_path, TARGET + "photometry:\n  apertures: [3.0, .inf]\n")
    assert "'photometry.apertures'" in message and "finite" in message


def test_a_non_utf8_byte_names_the_file_position_and_key(tmp_path):
    data = (TARGET + "notes: caf\xe9\n").encode("latin-1")
    message = _load(tmp_path, None, data=data)
    position = data.index(b"\xe9")
    assert f"byte {position}" in message and "0xe9" in message and "line 2" in message
    assert "'notes'" in message and "UTF-8" in message
