"""The key/value cache API of the installed transformers, in one place.

transformers 5.25 renamed the cache argument of every model's ``forward`` from
``past_key_values`` to ``cache`` (and the output field likewise); the old names still
work there but warn (a ``FutureWarning`` and a logged deprecation notice), and they go
away in a later release. Older releases know only ``past_key_values``. The package's
own calls go through these helpers, which read the name off the model class's
``forward`` signature and the output's fields, so they use whatever the installed
release expects and never the deprecated spelling.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

from torch import nn

_NAMES = ("cache", "past_key_values")  # newest first


@functools.lru_cache(maxsize=None)
def _forward_cache_name(model_cls: type) -> str:
    params = inspect.signature(model_cls.forward).parameters
    for name in _NAMES:
        if name in params:
            return name
    raise TypeError(
        f"{model_cls.__name__}.forward takes no key/value cache argument (looked for {' or '.join(_NAMES)}); "
        "the cached paths need a transformers causal LM"
    )


def cache_kwargs(model: nn.Module, cache) -> dict:
    """``{<the cache argument of model.forward>: cache, "use_cache": True}``.

    Raises:
        TypeError: ``model.forward`` has no cache argument.
    """
    return {_forward_cache_name(type(model)): cache, "use_cache": True}


@functools.lru_cache(maxsize=None)
def _output_cache_name(output_cls: type) -> str:
    fields = {f.name for f in dataclasses.fields(output_cls)}
    for name in _NAMES:
        if name in fields:
            return name
    raise TypeError(f"{output_cls.__name__} carries no key/value cache (looked for {' or '.join(_NAMES)})")


def returned_cache(output):
    """The key/value cache a model's forward returned (``output.cache`` or ``output.past_key_values``).

    Raises:
        TypeError: the output class has no cache field.
    """
    return getattr(output, _output_cache_name(type(output)))


def new_cache(model: nn.Module):
    """An empty ``DynamicCache`` for ``model`` (built from its config where the release accepts one)."""
    from transformers import DynamicCache

    if "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(config=model.config)
    return DynamicCache()
