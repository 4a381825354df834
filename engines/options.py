"""The options a role's settings pass its backend: each backend declares one typed model of them.

A model names every option once, with its type, default and help; a name it does not declare is
an error. Both a backend's generator and its scorer take the model; options marked
`generator_only` are refused for a scorer (see engines/backends.py).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# An adapter folder, given as text or a path.
AdapterPath = Annotated[str, BeforeValidator(_path_text)]


def generator_only(default: Any, *, description: str) -> Any:
    """A field only a generator takes (LoRA adapters, ...): a scorer refuses it by name."""
    return Field(default, description=description, json_schema_extra={"generator_only": True})


def is_generator_only(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("generator_only"))


class EngineOptions(BaseModel):
    """What every backend's options model extends: frozen, unknown names refused.

    The registry serves a role's LoRA adapter as a view over a shared base generator, so every
    backend's generator takes these two options.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_adapters: dict[str, AdapterPath] | None = generator_only(
        None,
        description="LoRA adapters to load over the base model, name -> folder; roles pick one "
        "with `adapter` (a role folder holding an adapter adds itself here).",
    )
    adapter: str | None = generator_only(
        None, description="The loaded LoRA adapter this role decodes with; none: the base model."
    )

    @classmethod
    def accepted(cls, *, scorer: bool) -> list[str]:
        """The option names a generator (or, with `scorer`, a scorer) takes, sorted."""
        return sorted(
            name
            for name, info in cls.model_fields.items()
            if not (scorer and is_generator_only(info))
        )
