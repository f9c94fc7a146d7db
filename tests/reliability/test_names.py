"""Dataset names: distinct targets never merge; long names are shortened the one way.

``T 1``, ``T/1`` and ``T?1`` all slug to ``T_1``: each gets its own dataset folder
(the first keeps ``T_1``, the others ``T_1-<hash of the name>``), stable from one sort
to the next. A 300-character name gives folder and light-curve file names the system
accepts, shortened by `pipekit.lco.slug`'s one rule.
"""

from pipekit.atomic import write_text_atomic
from pipekit.datasets import TARGET_NAME_FILE, dataset_dir
from pipekit.frames import FrameInfo
from pipekit.lco import name_hash, slug
from pipekit.lightcurve import lightcurve_paths


def info(target):
    return FrameInfo(target=target, instrument="fa15", instrument_class="sinistro", filter="ip")


def test_targets_with_one_slug_get_distinct_stable_folders(tmp_path):
    names = ["T 1", "T/1", "T?1"]
    first = [dataset_dir(tmp_path, info(name)) for name in names]
    assert len(set(first)) == 3, first
    assert first[0] == tmp_path / "T_1" / "sinistro" / "ip"
    assert first[1] == tmp_path / f"T_1-{name_hash('T/1')}" / "sinistro" / "ip"
    again = [dataset_dir(tmp_path, info(name)) for name in reversed(names)]
    assert list(reversed(again)) == first
    assert (tmp_path / "T_1" / TARGET_NAME_FILE).read_text() == "T 1"
    assert all(p.parts[-3] != ".." and not p.parts[-3].startswith(".") for p in first)


def test_a_300_character_name_gives_usable_folder_and_file_names(tmp_path):
    long_a = "OGLE-2026-BLG-" + "A" * 286
    long_b = "OGLE-2026-BLG-" + "A" * 285 + "B"
    red_a = dataset_dir(tmp_path, info(long_a))
    red_b = dataset_dir(tmp_path, info(long_b))
    assert red_a != red_b  # same first 100 characters, still distinct
    assert len(red_a.parts[-3]) == 100 and red_a.parts[-3] == slug(long_a)
    red_a.mkdir(parents=True)
    for path in lightcurve_paths(red_a, long_a, "ip"):
        assert len(path.name) < 255
        write_text_atomic(path, "ok")  # its temporary name must be accepted too
        assert path.read_text() == "ok"
