"""The existing microlensing pipeline's (LCOGT/microlensing_photometry, "the seed") four
example config files, verbatim, and a helper writing them with real paths for tests.

Sources (commits in the seed's repository):
``data_management/configuration/example_data_download.yaml`` c257e3e2,
``image_reduction/configuration/example_reduction_configuration.yaml`` 0cbbb0f0,
``image_reduction/configuration/example_reduction_manager_configuration.yaml`` 454d5335,
``image_reduction/configuration/example_tom_config.yaml`` 454d5335.
"""

from pathlib import Path

SEED_DATA_DOWNLOAD = """\
archives:
    lco:
        name: 'LCO'
        active: True
        url: 'https://archive-api.lco.global/'
        token_envvar: 'LCO_TOKEN'
        proposals:
            - 'PROPOSAL_ID'
        reduction_level:
            image: 91
            spectrum: 91

    soar:
        name: 'SOAR'
        active: True
        url: 'https://archive-api.lco.global/'
        token_envvar: 'SOAR_TOKEN'
        proposals:
            - 'PROPOSAL_ID'
        reduction_level:
            image: 0
            spectrum: 0
log_dir: '/path/to/directory/'
frame_list: '/path/to/directory/omega_frame_list.txt'
data_download_dir: '/path/to/directory/'
data_reduction_dir: '/path/to/directory/'
start_datetime: 'None'
end_datetime: 'None'
default_red_config: '/path/to/default/YAMLfile/'
"""

SEED_REDUCTION_CONFIG = """\
target:
  name: 'TEST'
  RA: '17:30:25.5'
  Dec: '-25:30:30.5'
photometry:
  aperture_arcsec: 2.0
  reference_image: 'name_of_image.fits'
tom:
  upload: True
  config_file: /path/to/config
  data_label: 'TEST'
"""

SEED_MANAGER_CONFIG = """\
log_dir: '/path/to/logging/directory/'
data_reduction_dir: '/path/to/top-level/reduction/directory/'
software_dir: '/path/to/software/installation/directory/'
instrument_list: ['sinistro', 'qhy']
dataset_selection:
  group: 'file'
  file: '/path/to/datasets/file/reduce_datasets.txt'
  start_date: 'None'
  end_date: 'None'
  ndays: 0
"""

SEED_TOM_CONFIG = """\
tom_user_id: 'userid'
tom_password: 'tom_password'
url: 'https://url.to.tom'
"""


def write_seed_file(path, text, replacements=(), append=""):
    """Write a seed example to ``path`` with its placeholder values replaced.

    Parameters
    ----------
    path : Path
    text : str
        One of the ``SEED_*`` texts.
    replacements : iterable of (str, str)
        ``(old, new)``: each ``old`` must occur in ``text`` (so the file stays the
        seed's, only with real values).
    append : str
        Lines added at the end (a key the seed's code needs but its example lacks).

    Returns
    -------
    Path
    """
    for old, new in replacements:
        assert old in text, f"{old!r} is not in the seed's file"
        text = text.replace(old, str(new))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + append, encoding="utf-8")
    return path
