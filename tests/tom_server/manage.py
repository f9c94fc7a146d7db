#!/usr/bin/env python
"""Django's command-line utility for the pipekit test TOM (run with the TOM venv's python)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tomproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
