import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

if os.environ.get("TB_SERVE_STATIC", "1") not in {"0", "false", "no"}:
    # The embedded default serves the admin's and the pages' static files itself; behind a web
    # server or CDN set TB_SERVE_STATIC=0 and serve STATIC_ROOT from there.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_application = ASGIStaticFilesHandler(django_application)

from metering.asgi import ProxyApplication  # noqa: E402  (needs the apps loaded)

# /v1/ goes straight to the proxy views; everything else through Django's full handler.
application = ProxyApplication(django_application)
