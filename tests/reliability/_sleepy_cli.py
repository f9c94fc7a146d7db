"""``python _sleepy_cli.py ARGS``: the ``pipekit`` command with the sleeping steps of `_sleepy`."""

import sys

import _sleepy  # noqa: F401 - importing it replaces the reduction steps

from pipekit.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
