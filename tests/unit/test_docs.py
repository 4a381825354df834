"""The documentation stays true to the code: the tables the site renders from the settings model,
BACKENDS and the stage graph cover every entry, a new entry appears without editing a page, and
the README stays short and links to every page of the site."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from engines.backends import BACKENDS, BackendSpec
from engines.base import Role
from engines.options import EngineOptions
from scripts.mkdocs_hooks import front_page, options_table, render, setting_rows, site_links
from service.settings import OTHER_ENV, Settings, known_env_names
from training.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _nav_pages() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return [page for entry in config["nav"] for page in entry.values()]


def _rendered(name: str) -> str:
    return render((DOCS / name).read_text())


def test_the_configuration_page_has_a_row_for_every_setting_the_server_reads() -> None:
    # known_env_names is what startup checks the environment against: every leaf must be shown.
    names = known_env_names()
    leaves = {n for n in names if not any(other.startswith(f"{n}__") for other in names)}
    roles = "|".join(role.value.upper() for role in Role)
    documented = {re.sub(rf"^GLORE_({roles})__", "GLORE_<ROLE>__", n) for n in leaves}
    page = _rendered("configuration.md")
    missing = [name for name in sorted(documented) if f"| `{name}` |" not in page]
    assert not missing, f"docs/configuration.md has no row for {missing}"


def test_every_setting_row_carries_its_default_and_a_description() -> None:
    rows = {variable: (default, what) for variable, _, default, what in setting_rows()}
    assert rows["GLORE_LIMITS__MAX_IN_FLIGHT"][0] == str(Settings().limits.max_in_flight)
    assert rows["GLORE_HOST"][0] == Settings().host
    assert rows["GLORE_DEBUG_FAULTS"][0] == "false"
    assert all(what.strip() for _, what in rows.values())


def test_a_setting_without_a_description_fails_the_docs_build_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Settings.model_fields["port"], "description", None)
    with pytest.raises(ValueError, match="GLORE_PORT has no description"):
        setting_rows()


def test_the_configuration_page_names_every_other_glore_variable() -> None:
    page = (DOCS / "configuration.md").read_text()
    assert not [name for name in OTHER_ENV if f"`{name}`" not in page]


class _ServerOptions(EngineOptions):
    url: str = Field(description="Where the server listens.")
    max_batch: int = Field(default=8, description="Most rows at once.")


def test_a_backend_added_to_the_table_appears_in_the_options_table_unedited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hf = BACKENDS["hf"]
    row = BackendSpec(hf.generator, hf.scorer, _ServerOptions, batch_size_option="max_batch")
    monkeypatch.setitem(BACKENDS, "another", row)
    table = options_table()
    assert "| `another` | `url` | required | Where the server listens. |" in table
    assert "| `another` | `max_batch` | 8 | Most rows at once. |" in table
    assert "| `another` | `adapter` (generators) | none |" in table
    assert "<!-- generated: backend-options -->" in (DOCS / "engines.md").read_text()


def test_the_design_page_shows_every_stage_of_the_graph_with_its_upstream() -> None:
    page = _rendered("design.md")
    for spec in STAGES:
        upstream = ", ".join(f"`{name}`" for name in spec.upstream) or "none"
        assert f"| `{spec.name}` | {upstream} |" in page


def test_an_unknown_generated_table_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown generated table 'nope'.*settings"):
        render("<!-- generated: nope -->\n")


def test_the_readme_is_short_and_links_to_every_page_of_the_site() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    pages = [page for page in _nav_pages() if page != "index.md"]
    missing = [page for page in pages if f"](docs/{page})" not in readme]
    assert not missing, f"README.md links to no {missing}"


def test_every_page_in_docs_is_in_the_nav() -> None:
    # mkdocs --strict fails on a page left out; this says which, without a build.
    nav = set(_nav_pages())
    assert not [p.name for p in DOCS.glob("*.md") if p.name not in nav]


def test_links_out_of_docs_point_where_the_site_puts_them() -> None:
    # The README is the site's index, and the reports sit at reports/ beside the pages.
    assert (
        front_page("[x](docs/service.md) ![p](docs/img/a.png)") == "[x](service.md) ![p](img/a.png)"
    )
    assert site_links("[r](../reports/tiny/report.md) [h](../README.md#results)") == (
        "[r](reports/tiny/report.md) [h](index.md#results)"
    )
