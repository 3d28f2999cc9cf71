"""Architecture registry, timm-style: ``@register_model`` + ``create_model(name, **config)``.

The registry knows no architecture by itself: importing ``eri.models`` imports the built-in
architecture modules, whose ``@register_model`` decorators fill it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eri.choices import DEFAULT_ARCH
from eri.errors import EriError

if TYPE_CHECKING:
    from eri.models.base import StreamingModel


class UnknownArchitectureError(EriError, ValueError):
    """An architecture name that is not registered; the message lists the valid ones."""


_REGISTRY: dict[str, type[StreamingModel]] = {}


def register_model(cls: type[StreamingModel]) -> type[StreamingModel]:
    """Class decorator: register an architecture under ``cls.arch_name``."""
    name = cls.arch_name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"An architecture named {name!r} is already registered.")
    _REGISTRY[name] = cls
    return cls


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[StreamingModel]:
    """The class registered as ``name``; unknown names raise listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"Unknown architecture {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}."
        ) from None


def create_model(name: str = DEFAULT_ARCH, **config: Any) -> StreamingModel:
    """Build architecture ``name``. ``config`` holds the architecture's keyword arguments plus
    optional ``window``, ``crop`` and ``audio`` specs (dataclasses or dicts)."""
    cls = get_model_class(name)
    return cls.from_config(config)
