"""The named conveniences of both adapters (``CrossEncoderRerank``, ``CohereRerank``, ...): their
fields, derived from the scorers' constructors (never copied by hand), and how they build a scorer.

The field mixins are plain pydantic models (both frameworks' bases are pydantic v2 models); each
adapter combines them with its own convenience base, so a convenience is declared once for both.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model

from rerankers_plugins._params import Param, parameters
from rerankers_plugins._secret import Secret
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.integrations._base import RerankAdapter, peer_options
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.registry import BACKENDS, load

__all__ = [
    "ConvenienceAdapter",
    "build_scorer",
    "conveniences",
    "option_fields",
    "positional_model",
]


def positional_model(
    cls: type[Any], kind: str, args: tuple[Any, ...], data: dict[str, Any]
) -> dict[str, Any]:
    """A convenience's one positional argument is its backend's first argument (``model``, ``llm``,
    ``base_url``), as for the scorers: ``BiEncoderRerank("minilm")``."""
    if not args:
        return data
    positional = BACKENDS[kind].positional
    if len(args) > 1 or positional is None:
        raise ConfigError(
            f"{cls.__name__} takes at most one positional argument ({positional or 'none'}); pass the rest by name"
        )
    if positional in data:
        raise ConfigError(f"{cls.__name__}: {positional} given both positionally and as {positional}=")
    return {positional: args[0], **data}


class ConvenienceAdapter(RerankAdapter):
    """An adapter whose scorer is built from its own fields: the options of the registry's
    ``kind`` backend (:func:`option_fields`). Those options built the model, so they are fixed once
    it is built: assigning one (or ``scorer``) is a ConfigError saying to build a new one."""

    kind: ClassVar[str]
    scorer: ScorerLike = Field(default=None, description="Built from the fields below.", exclude=True)  # type: ignore[assignment]

    def __init__(self, *args: Any, **data: Any) -> None:
        data = peer_options(type(self), positional_model(type(self), self.kind, args, data))
        scorer = self._built(data)  # may record what it built in data (a wrapped object's name)
        super().__init__(**{**data, "scorer": scorer})

    def _built(self, data: dict[str, Any]) -> ScorerLike:
        """The scorer the fields (``data``) describe."""
        return build_scorer(self.kind, data)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "scorer" or name in option_fields(self.kind).model_fields:
            raise ConfigError(
                f"{type(self).__name__}.{name} is fixed once the model is built from it: build a new "
                f"{type(self).__name__}(...) (or give the adapter itself a scorer= and assign that)"
            )
        super().__setattr__(name, value)


def conveniences(base: type[Any], module: str) -> dict[str, type[Any]]:
    """One convenience class per registry backend that declares one: ``base`` (an adapter's
    convenience base, which builds its scorer from ``kind``) combined with the backend's fields."""
    out: dict[str, type[Any]] = {}
    for kind, b in BACKENDS.items():
        if b.convenience is None:
            continue
        adapter = next(
            c for c in base.__mro__ if RerankAdapter in c.__bases__ and c is not ConvenienceAdapter
        )
        doc = (
            f"``{adapter.__name__}`` over {b.summary}.\n\n"
            f"Built from the registry's ``{kind!r}`` backend: the fields below are its options; "
            "``top_n``, ``threshold`` and the rest are the base class's."
        )
        namespace = {"__module__": module, "__qualname__": b.convenience, "__doc__": doc, "kind": kind}
        out[b.convenience] = type(b.convenience, (option_fields(kind), base), namespace)
    return out


def build_scorer(kind: str, data: dict[str, Any]) -> ScorerLike:
    """Build the scorer a convenience describes with its fields (the registry's ``kind`` entry):
    every option the caller gave is passed on as given (the scorer checks it), the rest keep the
    scorer's own defaults."""
    if data.get("scorer") is not None:
        raise ConfigError(f"pass either scorer=... or the {kind} model options, not both")
    backend = BACKENDS[kind]
    fields = option_fields(kind).model_fields
    args = []
    positional = backend.positional
    if positional is not None:
        if data.get(positional) is not None:
            args.append(data[positional])
        elif fields[positional].is_required():
            raise ConfigError(f"the {kind} convenience needs {positional}=...")
    options = {k: data[k] for k in fields if k != positional and k in data}
    if isinstance(options.get("api_key"), SecretStr):
        options["api_key"] = Secret(options["api_key"].get_secret_value())
    built: ScorerLike = load(backend.target)(*args, **options)
    return built


def _field(param: Param) -> tuple[Any, Any]:
    """One convenience field for a scorer parameter: its type, default and help (the scorer's
    docstring); secrets and live objects are never dumped, secrets never shown."""
    annotation = SecretStr | None if param.secret and param.name == "api_key" else param.annotation
    hidden = param.secret or param.credentials
    info = Field(
        default=... if param.required else param.default,
        description=param.help,
        exclude=True if hidden or param.live else None,
        repr=not hidden,
    )
    return annotation, info


@functools.cache
def option_fields(kind: str) -> type[BaseModel]:
    """The convenience fields of the registry's ``kind`` backend: one pydantic field per parameter
    of its scorer's constructor (:func:`~rerankers_plugins._params.parameters`: the load options
    of ``**load`` included), with the constructor's type and default (so the adapters can neither
    miss an option nor disagree on a default) and the scorer's docstring as help."""
    backend = BACKENDS[kind]
    cls = load(backend.target)
    fields: dict[str, Any] = {name: _field(param) for name, param in parameters(cls).items()}
    name = f"{backend.convenience or cls.__name__}Fields"
    config = ConfigDict(arbitrary_types_allowed=True)
    model: type[BaseModel] = create_model(name, __config__=config, __module__=__name__, **fields)
    return model
