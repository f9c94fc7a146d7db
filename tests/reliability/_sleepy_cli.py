"""``python _sleepy_cli.py ARGS``: the ``pipekit`` command with the sleeping steps of `_sleepy`."""

import sys

import _sleepy

from pipekit.cli import main

if __name__ == "__main__":
    _sleepy.install()
    sys.exit(main(sys.argv[1:]))
