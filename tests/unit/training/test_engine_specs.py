"""Training samples through the engines layer: the specs it builds are ones each backend takes."""

from __future__ import annotations

import pytest

from engines.backends import BACKENDS, engine_options
from engines.base import Backend, Role
from training.generation import engine_spec


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("role", [Role.POLICY, Role.ORM])
def test_a_training_engine_spec_passes_the_backends_own_option_check(
    backend: str, role: Role
) -> None:
    spec = engine_spec("/ckpt", backend, 48)
    if backend == Backend.REMOTE:
        spec.options["base_url"] = "http://model:8000"  # where its model is: the caller's to say
    engine_options(role, spec)  # raises on an unknown option
    assert 48 in spec.options.values()
