"""RegistryService: models, their immutable versions, builds and publication.

Besides the servicer, its public surface is what other services and the demo use: model views
with access checks, the model-name rule, and the writes the demo makes without a client."""

from foretell.services.registry._queries import (
    ModelView,
    Upload,
    add_version,
    create_model,
    get_view,
    owned_model,
    publish,
)
from foretell.services.registry._servicer import RegistryServicer, add_to_server
from foretell.services.registry._validate import model_name, require_name

__all__ = [
    "ModelView",
    "RegistryServicer",
    "Upload",
    "add_to_server",
    "add_version",
    "create_model",
    "get_view",
    "model_name",
    "owned_model",
    "publish",
    "require_name",
]
