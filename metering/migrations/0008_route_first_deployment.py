"""Each existing route's upstream and upstream model become its first deployment."""

from django.db import migrations


def forwards(apps, schema_editor):
    ModelRoute = apps.get_model("metering", "ModelRoute")
    Deployment = apps.get_model("metering", "Deployment")
    routes = ModelRoute.objects.filter(deployments__isnull=True)
    Deployment.objects.bulk_create(
        Deployment(route_id=r.pk, upstream_id=r.upstream_id, upstream_model=r.upstream_model)
        for r in routes
    )


class Migration(migrations.Migration):
    dependencies = [("metering", "0007_deployments")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
