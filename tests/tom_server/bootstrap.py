"""Fill an empty test TOM: one user with a password and an API token, and targets.

Run with the TOM venv's python from this folder, after ``manage.py migrate``::

    PIPEKIT_TOM_USER=... PIPEKIT_TOM_PASSWORD=... python bootstrap.py targets.json

``targets.json`` is a list of ``{"name", "ra", "dec", "aliases": [...]}``. The
password comes from the environment, not the command line. With
``PIPEKIT_TOM_GROUP`` set, the user joins a group of that name. Prints one
JSON line: ``{"token": ..., "targets": {name: id}}``.
"""
import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tomproject.settings")
django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from tom_targets.models import Target, TargetName  # noqa: E402


def main(targets_file):
    username = os.environ["PIPEKIT_TOM_USER"]
    user, _ = User.objects.get_or_create(username=username)
    user.set_password(os.environ["PIPEKIT_TOM_PASSWORD"])
    user.save()
    token, _ = Token.objects.get_or_create(user=user)
    if os.environ.get("PIPEKIT_TOM_GROUP"):
        group, _ = Group.objects.get_or_create(name=os.environ["PIPEKIT_TOM_GROUP"])
        user.groups.add(group)

    with open(targets_file) as fh:
        wanted = json.load(fh)
    ids = {}
    for spec in wanted:
        target, _ = Target.objects.get_or_create(
            name=spec["name"],
            defaults={"type": Target.SIDEREAL, "ra": spec["ra"], "dec": spec["dec"], "epoch": 2000.0},
        )
        for alias in spec.get("aliases", []):
            TargetName.objects.get_or_create(target=target, name=alias)
        # PRIVATE targets (the default) are seen only by users given access.
        target.give_user_access(user)
        ids[target.name] = target.id
    print(json.dumps({"token": token.key, "targets": ids}))


if __name__ == "__main__":
    main(sys.argv[1])
