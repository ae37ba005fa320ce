# Imported here so that @shared_task binds to our app whenever Django starts.
from portal.celery import app as celery_app

__all__ = ["celery_app"]
