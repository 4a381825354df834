"""Every backend as one row: its generator, its scorer and its typed options model.

The registry, the service's settings and every CLI's `--backend` read this table, so a new
backend is one module (two engine classes and an options model) plus one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from engines.base import Backend, EngineLoadError, EngineSpec, Generator, Role, Scorer
from engines.hf import HFGenerator, HFOptions, HFScorer
from engines.options import EngineOptions
from engines.remote import RemoteGenerator, RemoteOptions, RemoteScorer
from engines.vllm import VLLMGenerator, VLLMOptions, VLLMScorer
from engines.vllm import prepare_load as prepare_vllm_load

OptionsT = TypeVar("OptionsT", bound=EngineOptions)
O_contra = TypeVar("O_contra", bound=EngineOptions, contravariant=True)
E_co = TypeVar("E_co", covariant=True)


class EngineClass(Protocol[O_contra, E_co]):
    """How the registry builds an engine: a checkpoint folder, the options, a name for logs."""

    def __call__(self, path: str, options: O_contra, *, name: str | None = ...) -> E_co: ...


@dataclass(frozen=True)
class BackendSpec(Generic[OptionsT]):
    """One backend: what serves a generating role, what serves a scoring role, what they take."""

    generator: EngineClass[OptionsT, Generator]
    scorer: EngineClass[OptionsT, Scorer]
    options: type[OptionsT]
    # The option that bounds the sequences one engine works on at once (training sets it).
    batch_size_option: str
    # Whether this backend's engines may load at the same time as other engines (the registry
    # then loads them on a thread pool). Only where a load is safe beside others in one process
    # and mostly waits (on a child process or the network) rather than holding our cores.
    parallel_load: bool = False
    # Called with each engine's checkpoint, one engine after another, before engines of this
    # backend load together: the part of a load that is unsafe beside another (first imports).
    prepare_load: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.batch_size_option not in self.options.model_fields:
            raise ValueError(
                f"batch_size_option {self.batch_size_option!r} is not an option of "
                f"{self.options.__name__}"
            )

    def engine_class(self, role: Role) -> EngineClass[OptionsT, Generator | Scorer]:
        return self.scorer if Role(role).is_scorer else self.generator


BACKENDS: dict[str, BackendSpec[Any]] = {
    Backend.HF: BackendSpec(
        generator=HFGenerator,
        scorer=HFScorer,
        options=HFOptions,
        batch_size_option="max_batch_size",
        # Not thread-safe: from_pretrained sets process-wide state while it builds a model
        # (torch's default dtype, a meta-device context). Three tiny causal LMs loaded on
        # threads failed every time ("Cannot copy out of meta tensor"), and later loads in that
        # process failed too. Nothing to win either: the five tiny models load in 0.2 s once
        # transformers is imported, and a load holds this process's cores.
        parallel_load=False,
    ),
    Backend.VLLM: BackendSpec(
        generator=VLLMGenerator,
        scorer=VLLMScorer,
        options=VLLMOptions,
        # vLLM schedules continuously; this caps the sequences in its running batch.
        batch_size_option="max_num_seqs",
        # Each engine loads its model in its own EngineCore process; this one mostly waits.
        parallel_load=True,
        prepare_load=prepare_vllm_load,
    ),
    Backend.REMOTE: BackendSpec(
        generator=RemoteGenerator,
        scorer=RemoteScorer,
        options=RemoteOptions,
        # The server schedules; this caps the connections one engine opens to it.
        batch_size_option="max_connections",
        # A load is a few HTTP calls to the model's server.
        parallel_load=True,
    ),
}


def backend_names() -> list[str]:
    """The backends a setting or a `--backend` may name, in the table's order."""
    return [str(name) for name in BACKENDS]


def backend_row(name: str) -> BackendSpec[Any]:
    """The row for `name`; a ValueError names the backends there are."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {backend_names()}") from None


def engine_options(role: Role, spec: EngineSpec) -> EngineOptions:
    """`spec.options` validated by its backend's model for `role`.

    EngineLoadError names the role and the path, and an unknown option by name with the accepted
    ones (a scorer accepts no generator-only option).
    """
    role = Role(role)
    try:
        row = backend_row(spec.backend)
    except ValueError as exc:
        raise EngineLoadError(str(exc), role=str(role), path=spec.path) from None
    accepted = row.options.accepted(scorer=role.is_scorer)
    unknown = sorted(set(spec.options) - set(accepted))
    if unknown:
        raise EngineLoadError(
            f"unknown option(s) {unknown} for backend {spec.backend}; accepted: {accepted}",
            role=str(role),
            path=spec.path,
        )
    try:
        return row.options.model_validate(spec.options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise EngineLoadError(
            f"cannot load the {role.value} model: invalid option(s) for backend "
            f"{spec.backend}: {problems}",
            role=str(role),
            path=spec.path,
        ) from None
