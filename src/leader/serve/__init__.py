"""The REST service and web page: ``create_app(recommender, settings)`` (see docs/serving.md)."""

from leader.serve.app import create_app
from leader.serve.schemas import ServeSettings

__all__ = ["ServeSettings", "create_app"]
