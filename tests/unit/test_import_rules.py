"""The documented import rules are the linter's: `make lint` checks the contracts in
pyproject.toml (import-linter), and the Layout section of docs/design.md states each one as
written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _kept_from_training() -> set[str]:
    contract = _contracts()["training-service"]
    return {m.removeprefix("service.") for m in contract["forbidden_modules"]}


def _layout() -> str:
    page = (ROOT / "docs" / "design.md").read_text()
    return page[page.index("## Layout") : page.index("## The text contract")]


def test_the_design_page_states_the_layers_contract() -> None:
    layers = _contracts()["layers"]["layers"]
    assert f"**Layers: `{' → '.join(layers)}`.**" in _layout()


def test_the_design_page_names_what_training_may_not_import_from_service() -> None:
    assert _contracts()["training-service"]["source_modules"] == ["training"]
    listed = re.search(r"HTTP side \(([^)]*)\)", " ".join(_layout().split()))
    assert listed is not None
    assert {name.strip() for name in listed.group(1).split(",")} == _kept_from_training()


def test_every_service_module_is_either_shared_with_training_or_on_the_http_side() -> None:
    """A new service module must be placed on one side of the rule (and the design page's list
    kept with it), or training could import it unchecked."""
    shared = {"pipeline", "profile", "settings"}
    forbidden = {
        m.removeprefix("service.") for m in _contracts()["training-service"]["forbidden_modules"]
    }
    modules = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "service").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert modules == shared | forbidden
    assert not shared & forbidden


def test_the_product_never_imports_the_tests() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = _contracts()["no-tests"]
    assert contract["forbidden_modules"] == ["tests"]
    assert set(contract["source_modules"]) == set(config["root_packages"]) - {"tests"}
    assert "**Nothing in the product imports `tests/`.**" in _layout()
