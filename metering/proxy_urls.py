"""The proxy's URLs (/v1/...), kept apart from the REST API."""

urlpatterns: list = []
