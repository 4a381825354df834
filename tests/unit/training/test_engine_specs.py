"""Training samples through the engines layer: the specs it builds are ones each backend takes."""

from __future__ import annotations

import pytest

from engines.base import Backend, Role
from engines.registry import _check_options, _engine_class
from training.generation import engine_spec


@pytest.mark.parametrize("backend", list(Backend))
@pytest.mark.parametrize("role", [Role.POLICY, Role.ORM])
def test_a_training_engine_spec_passes_the_backends_own_option_check(
    backend: Backend, role: Role
) -> None:
    spec = engine_spec("/ckpt", backend.value, 48)
    _check_options(role, spec, _engine_class(role, backend))  # raises on an unknown option
    assert 48 in spec.options.values()
