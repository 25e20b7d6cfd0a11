import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_asgi_application()

if os.environ.get("TB_SERVE_STATIC", "1") not in {"0", "false", "no"}:
    # The embedded default serves the admin's and the pages' static files itself; behind a web
    # server or CDN set TB_SERVE_STATIC=0 and serve STATIC_ROOT from there.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)
