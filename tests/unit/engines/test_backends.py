"""A backend is one row of engines.backends.BACKENDS: registering a throwaway one (a row pointing
at small classes defined here) is all the registry, the settings and the CLIs need."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from engines.backends import BACKENDS, BackendSpec, backend_names, engine_options
from engines.base import (
    Backend,
    Completion,
    EngineHealth,
    EngineLoadError,
    EngineSpec,
    Generator,
    LikelihoodRequest,
    Role,
    SamplingParams,
    Scorer,
    ScoreRequest,
    StepScores,
    TokenLogprobs,
)
from engines.options import EngineOptions, is_generator_only
from engines.registry import load_engine, load_engines, run_dir_specs
from scripts.mkdocs_hooks import render
from service.settings import RoleSettings
from training.generation import engine_spec

# The modules whose `--backend` must offer every backend of the table.
CLIS = ("training.evaluation.cli", "bench.service", "bench.load")


class ToyOptions(EngineOptions):
    greeting: str = Field(default="hello", description="What the toy generator answers.")
    max_rows: int = Field(default=4, description="Rows at once.")


class _ToyEngine:
    def __init__(self, path: str, options: ToyOptions, *, name: str | None = None) -> None:
        self.path, self.options, self.name = path, options, name or "toy"
        self.closed = False

    def health(self) -> EngineHealth:
        return EngineHealth(not self.closed, "toy")

    async def close(self) -> None:
        self.closed = True


class ToyGenerator(_ToyEngine):
    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        return [[Completion(self.options.greeting, 1, "stop")] * params.n for _ in prompts]

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        return [TokenLogprobs((0.0,)) for _ in requests]

    def with_adapter(self, adapter: str | None) -> ToyGenerator:
        return self


class ToyScorer(_ToyEngine):
    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        return [StepScores(tuple(0.5 for _ in r.steps)) for r in requests]


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    row = BackendSpec(
        generator=ToyGenerator, scorer=ToyScorer, options=ToyOptions, batch_size_option="max_rows"
    )
    monkeypatch.setitem(BACKENDS, "toy", row)
    yield "toy"


def test_load_engine_builds_a_registered_backend_from_its_row(toy: str, tmp_path: Path) -> None:
    policy = load_engine(Role.POLICY, EngineSpec(str(tmp_path), toy, {"greeting": "hi"}))
    orm = load_engine(Role.ORM, EngineSpec(str(tmp_path), toy))
    assert isinstance(policy, ToyGenerator) and isinstance(policy, Generator)
    assert isinstance(orm, ToyScorer) and isinstance(orm, Scorer)
    assert policy.name == "policy:toy" and policy.path == str(tmp_path)
    # The engine receives its backend's typed model, defaults filled in.
    assert policy.options == ToyOptions(greeting="hi", max_rows=4)
    out = asyncio.run(policy.generate(["q"], SamplingParams()))
    assert out[0][0].text == "hi"


def test_load_engines_shares_a_registered_backends_engine_between_roles(
    toy: str, tmp_path: Path
) -> None:
    roles = [Role.POLICY, Role.REFINE_GLOBAL, Role.ORM, Role.SORM]
    specs = {r: EngineSpec(str(tmp_path), toy) for r in roles}
    engines = load_engines(specs)
    assert len(engines.unique_engines()) == 2  # one generator, one scorer
    assert engines.policy is engines.refine_global and engines.orm is engines.sorm
    asyncio.run(engines.close())
    assert not any(h.healthy for h in engines.health().values())


def test_a_registered_backends_options_are_coerced_by_its_model(toy: str) -> None:
    options = engine_options(Role.POLICY, EngineSpec("/ckpt", toy, {"max_rows": "8"}))
    assert options == ToyOptions(max_rows=8)


def test_an_option_the_model_does_not_declare_is_refused_with_the_accepted_ones(
    toy: str,
) -> None:
    with pytest.raises(EngineLoadError) as err:
        load_engine(Role.SORM, EngineSpec("/ckpt", toy, {"greting": "hi"}))
    message = str(err.value)
    assert "unknown option(s) ['greting'] for backend toy" in message
    assert "greeting" in message.split("accepted:")[1] and "max_rows" in message
    assert err.value.role == "sorm" and err.value.path == "/ckpt"


def test_an_option_of_the_wrong_type_is_refused_by_name(toy: str) -> None:
    with pytest.raises(EngineLoadError, match="max_rows") as err:
        load_engine(Role.POLICY, EngineSpec("/ckpt", toy, {"max_rows": "many"}))
    assert err.value.role == "policy" and "/ckpt" in str(err.value)


# The options a backend cannot do without (where its model is).
REQUIRED_OPTIONS: dict[str, dict[str, object]] = {Backend.REMOTE: {"base_url": "http://model:8000"}}


@pytest.mark.parametrize("backend", ["toy", *Backend])
def test_a_scorer_refuses_the_generator_only_options(toy: str, backend: str) -> None:
    spec = EngineSpec("/ckpt", backend, {"adapter": "loud", **REQUIRED_OPTIONS.get(backend, {})})
    with pytest.raises(EngineLoadError, match=r"unknown option\(s\) \['adapter'\]"):
        engine_options(Role.ORM, spec)
    assert engine_options(Role.POLICY, spec).adapter == "loud"


@pytest.mark.parametrize("module", CLIS)
def test_every_backend_choice_of_the_clis_comes_from_the_table(toy: str, module: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "backend"]
    assert list(action.choices or []) == backend_names()
    assert "toy" in (action.choices or []) and Backend.VLLM in (action.choices or [])


def test_the_settings_take_a_registered_backend_and_refuse_an_unknown_one(toy: str) -> None:
    assert RoleSettings(backend="toy").backend == "toy"
    with pytest.raises(ValidationError, match=r"unknown backend 'tgi'; choose one of \['hf'"):
        RoleSettings(backend="tgi")


def test_training_bounds_a_batch_through_the_option_the_row_names(toy: str) -> None:
    assert engine_spec("/ckpt", toy, 8).options == {"max_rows": 8}
    assert engine_spec("/ckpt", Backend.VLLM, 8).options == {"max_num_seqs": 8}
    assert engine_spec("/ckpt", Backend.HF, 8).options == {"max_batch_size": 8}
    with pytest.raises(ValueError, match="tgi"):
        engine_spec("/ckpt", "tgi", 8)


def test_run_dir_specs_name_a_registered_backend(toy: str, tmp_path: Path) -> None:
    specs = run_dir_specs(tmp_path, backend=toy, roles=[Role.POLICY])
    assert isinstance(load_engine(Role.POLICY, specs[Role.POLICY]), ToyGenerator)


def test_every_shipped_backend_has_a_row() -> None:
    assert set(Backend) <= set(BACKENDS)
    assert backend_names()[:2] == ["hf", "vllm"]


def test_a_row_must_name_a_batch_option_its_model_declares() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BackendSpec(
            generator=ToyGenerator,
            scorer=ToyScorer,
            options=ToyOptions,
            batch_size_option="max_batch",
        )


def _page_rows(name: str) -> list[str]:
    """The engines page's row for each option of a backend, written out here from its model."""

    def shown(value: object) -> str:
        return (
            "none"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )

    model = BACKENDS[name].options
    return [
        f"| `{name}` | `{option}`{' (generators)' if is_generator_only(info) else ''} | "
        f"{'required' if info.is_required() else shown(info.default)} | {info.description} |"
        for option, info in model.model_fields.items()
    ]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_the_engines_page_lists_every_option_of_every_backend_as_its_model_declares(
    backend: str,
) -> None:
    # The page asks for the table; the site's build renders it from BACKENDS (mkdocs_hooks).
    page = (Path(__file__).resolve().parents[3] / "docs" / "engines.md").read_text()
    assert "<!-- generated: backend-options -->" in page
    rendered = render(page)
    missing = [row for row in _page_rows(backend) if row not in rendered]
    assert not missing, "docs/engines.md rows missing:\n" + "\n".join(missing)
