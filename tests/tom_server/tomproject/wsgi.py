"""WSGI entry point of the pipekit test TOM."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tomproject.settings")
application = get_wsgi_application()
