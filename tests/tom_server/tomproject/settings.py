"""Settings of the minimal TOM Toolkit 3.x project used by pipekit's tests.

Written by hand after what ``manage.py tom_setup`` generates, cut down to what
the REST API needs. Runtime files (SQLite database, uploaded data products,
cache) live in ``$PIPEKIT_TOM_RUN_DIR`` (default ``tests/tom_server/run/``,
gitignored), so each test session can start from an empty TOM.
"""
import os

from tom_common.default_settings import *  # noqa: F401,F403  (TOM Toolkit's defaults)

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_DIR = os.environ.get("PIPEKIT_TOM_RUN_DIR", os.path.join(BASE_DIR, "run"))

# A throwaway key: this TOM only ever listens on 127.0.0.1 during a test run.
SECRET_KEY = "pipekit-test-tom-not-secret"
SECRET_KEY_FALLBACKS = []
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

TOM_NAME = "pipekit-test-tom"
INSTALLED_APPS = TOMTOOLKIT_INSTALLED_APPS  # noqa: F405
SITE_ID = 1
MIDDLEWARE = TOMTOOLKIT_MIDDLEWARE  # noqa: F405
ROOT_URLCONF = "tomproject.urls"
WSGI_APPLICATION = "tomproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
CRISPY_TEMPLATE_PACK = "bootstrap5"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(RUN_DIR, "db.sqlite3"),
        # Uploads and deletes come from several request threads at once.
        "OPTIONS": {"timeout": 30},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
AUTH_PASSWORD_VALIDATORS = []
AUTHENTICATION_BACKENDS = TOMTOOLKIT_AUTHENTICATION_BACKENDS  # noqa: F405
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
FORMAT_MODULE_PATH = ["tom_base.formats"]

STATIC_URL = "/static/"
STATIC_ROOT = os.path.join(RUN_DIR, "static")
MEDIA_ROOT = os.path.join(RUN_DIR, "media")
MEDIA_URL = "/data/"

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[{asctime}] {levelname} {name}: {message}", "style": "{"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"": {"handlers": ["console"], "level": "INFO"}},
}

TARGET_TYPE = "SIDEREAL"
MATCH_MANAGERS = {}
FACILITIES = {}
TOM_FACILITY_CLASSES = []
DATA_PRODUCT_TYPES = {
    "photometry": ("photometry", "Photometry"),
    "fits_file": ("fits_file", "FITS File"),
    "spectroscopy": ("spectroscopy", "Spectroscopy"),
    "image_file": ("image_file", "Image File"),
}
DATA_PROCESSORS = {
    "photometry": "tom_dataproducts.processors.photometry_processor.PhotometryProcessor",
    "spectroscopy": "tom_dataproducts.processors.spectroscopy_processor.SpectroscopyProcessor",
}
EXTRA_FIELDS = []
GENERAL_SEARCH_FUNCTIONS = {}
SELECTION_EXTRA_FIELDS = []
AUTH_STRATEGY = "READ_ONLY"
OPEN_URLS = []

# The other mode (per-group data permissions) makes every new upload fail with
# a 500 in tomtoolkit 3.1.
TARGET_PERMISSIONS_ONLY = True
TARGET_DEFAULT_PERMISSION = "PRIVATE"
TARGET_LIST_COLUMNS = ["name", "type", "observations", "saved_data"]

HOOKS = {
    "target_post_save": "tom_common.hooks.target_post_save",
    "observation_change_state": "tom_common.hooks.observation_change_state",
    "data_product_post_upload": "tom_dataproducts.hooks.data_product_post_upload",
    "data_product_post_save": "tom_dataproducts.hooks.data_product_post_save",
    "multiple_data_products_post_save": "tom_dataproducts.hooks.multiple_data_products_post_save",
}
AUTO_THUMBNAILS = False
THUMBNAIL_MAX_SIZE = (0, 0)
THUMBNAIL_DEFAULT_SIZE = (200, 200)
HINTS_ENABLED = False
HINT_LEVEL = 20

# Token auth (DRF authtoken, with TOM Toolkit's expiry/MFA checks) and HTTP Basic.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tom_common.accounts.api_auth.TomTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
}
PLOTLY_THEME = "plotly_white"
SHOW_PAGINATION_INFO = True
