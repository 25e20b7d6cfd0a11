from django.urls import include, path
from rest_framework.routers import SimpleRouter

from metering import apis

router = SimpleRouter()
router.register("upstreams", apis.UpstreamViewSet, basename="upstream")
router.register("model-routes", apis.ModelRouteViewSet, basename="model-route")
router.register("prices", apis.ModelPriceViewSet, basename="price")
router.register("usage", apis.UsageViewSet, basename="usage")

keys = SimpleRouter()
keys.register("keys", apis.EmployeeKeysViewSet, basename="employee-key")

urlpatterns = [
    path("", include(router.urls)),
    path("employees/<str:employee_id>/", include(keys.urls)),
]
