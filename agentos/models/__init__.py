"""Models: the :class:`Model` contract (``base``) and one module per implementation."""

from agentos.models.base import Model
from agentos.models.echo import EchoModel

__all__ = ["EchoModel", "Model"]
