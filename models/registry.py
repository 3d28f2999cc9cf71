"""Architecture registry, timm-style: ``@register_model`` + ``create_model(name, **config)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.base import StreamingModel

_REGISTRY: dict[str, type[StreamingModel]] = {}
DEFAULT_ARCH = "dual_branch"


def register_model(cls: type[StreamingModel]) -> type[StreamingModel]:
    """Class decorator: register an architecture under ``cls.arch_name``."""
    name = cls.arch_name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"An architecture named {name!r} is already registered.")
    _REGISTRY[name] = cls
    return cls


def _ensure_builtin() -> None:
    # Importing the modules runs their @register_model decorators.
    import models.cnn_lstm  # noqa: F401
    import models.dual_branch  # noqa: F401
    import models.mtl_dan  # noqa: F401


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[StreamingModel]:
    """The class registered as ``name``; unknown names raise listing the valid ones."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown architecture {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}."
        ) from None


def create_model(name: str = DEFAULT_ARCH, **config: Any) -> StreamingModel:
    """Build architecture ``name``. ``config`` holds the architecture's keyword arguments plus
    optional ``window``, ``crop`` and ``audio`` specs (dataclasses or dicts)."""
    cls = get_model_class(name)
    return cls.from_config(config)
