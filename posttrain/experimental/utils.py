"""TRL's ``trl.experimental.utils`` helpers that user code calls."""

from ..models.sharding import create_reference_model

__all__ = ["create_reference_model"]
