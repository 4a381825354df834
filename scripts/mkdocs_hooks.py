"""MkDocs hooks (mkdocs.yml names this file): the site's front page is the README, the reports
under reports/ join the site, and the reference tables are rendered from the code when the site
is built, so they cannot drift from it.

A page asks for a table with a line `<!-- generated: NAME -->`, NAME one of `TABLES`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

ROOT = Path(__file__).resolve().parents[1]
# mkdocs loads this file by path, and puts sys.path back once it is loaded: the code it documents
# is imported now, from the checkout this file sits in (not from wherever the venv points).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from engines.backends import BACKENDS  # noqa: E402
from engines.base import Role  # noqa: E402
from engines.options import is_generator_only  # noqa: E402
from service.settings import Settings  # noqa: E402
from training.pipeline import STAGES  # noqa: E402

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
# What the site takes from outside docs/: the reports (pages, their pictures and JSON).
REPORT_SUFFIXES = {".md", ".png", ".svg", ".json"}


# ------------------------------------------------------------------ how a value reads in a table


def shown(value: object) -> str:
    """A default as the tables show it: none, true/false, an enum's value, a path's text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | dict | tuple) and not value:
        return "none"
    return str(value)


def _type_name(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not None and args and len(args) < len(get_args(annotation)):
        return _type_name(args[0]) if len(args) == 1 else " or ".join(map(_type_name, args))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    origin = get_origin(annotation)
    if origin is not None and get_origin(origin) is None and str(origin) == "typing.Annotated":
        return _type_name(args[0])
    if origin in (list, tuple):
        return "list (comma-separated or JSON)"
    if origin is dict:
        return "JSON object"
    if isinstance(annotation, type):
        return {"Path": "path", "SecretStr": "secret"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _bounds(info: FieldInfo) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for item in info.metadata:
        for attr, sign in signs.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return f" ({', '.join(found)})" if found else ""


def _default(info: FieldInfo) -> Any:
    if info.is_required():
        return "required"
    return info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]


def _cell(text: str) -> str:
    """Text as one table cell: one line, pipes escaped, and no `<` that would open an HTML tag."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


# ------------------------------------------------------------------ the tables


def setting_rows() -> list[tuple[str, str, str, str]]:
    """(variable, type, default, what it does) for every setting of service.settings.Settings,
    nested models spelled out with `__` and the per-role models once, as `GLORE_<ROLE>__...`.
    A setting with no description is a ValueError naming it: the table would say nothing."""

    roles = {role.value for role in Role}
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if name in roles:
                    if name == Role.POLICY.value:  # the same model for each role: once
                        walk(annotation, f"{prefix}<ROLE>__")
                    continue
                walk(annotation, f"{prefix}{name.upper()}__")
                continue
            variable = f"{prefix}{name.upper()}"
            if not info.description:
                raise ValueError(
                    f"setting {variable} has no description: give its Field one "
                    "(docs/configuration.md renders it)"
                )
            rows.append(
                (
                    variable,
                    _type_name(annotation) + _bounds(info),
                    shown(_default(info)),
                    info.description,
                )
            )

    walk(Settings, "GLORE_")
    return rows


def settings_table() -> str:
    lines = ["| setting | type | default | what it does |", "| --- | --- | --- | --- |"]
    lines += [
        f"| `{var}` | {_cell(kind)} | {_cell(default)} | {_cell(what)} |"
        for var, kind, default, what in setting_rows()
    ]
    return "\n".join(lines)


def option_rows() -> list[str]:
    """One row per option of every backend in engines.backends.BACKENDS, in the table's order,
    so a backend added there appears here."""

    return [
        f"| `{name}` | `{option}`{' (generators)' if is_generator_only(info) else ''} | "
        f"{'required' if info.is_required() else shown(info.default)} | {info.description} |"
        for name, row in BACKENDS.items()
        for option, info in row.options.model_fields.items()
    ]


def options_table() -> str:
    header = ["| backend | option | default | what it does |", "| --- | --- | --- | --- |"]
    return "\n".join(header + option_rows())


def backends_list() -> str:
    """The backends a setting may name, with the classes each row serves a role with."""

    lines = [
        "| backend | generator | scorer | options model | loads beside other engines |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{name}` | `{row.generator.__name__}` | `{row.scorer.__name__}` | "
        f"`{row.options.__name__}` | {'yes' if row.parallel_load else 'no, one at a time'} |"
        for name, row in BACKENDS.items()
    ]
    return "\n".join(lines)


def stages_table() -> str:
    """The training graph as training.pipeline.STAGES declares it, in its order."""

    def names(items: tuple[Any, ...]) -> str:
        return ", ".join(f"`{shown(item)}`" for item in items) or "none"

    lines = [
        "| stage | upstream | config sections | done when these exist |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{spec.name}` | {names(spec.upstream)} | {names(spec.sections)} | "
        f"{names(spec.outputs)} |"
        for spec in STAGES
    ]
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "stages": stages_table,
    "backends": backends_list,
    "backend-options": options_table,
}


def render(markdown: str) -> str:
    """`markdown` with every `<!-- generated: NAME -->` line replaced by its table; an unknown
    NAME is a ValueError naming the ones there are."""

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise ValueError(f"unknown generated table {name!r}; there are {sorted(TABLES)}")
        return TABLES[name]()

    return MARKER.sub(table, markdown)


# ------------------------------------------------------------------ where pages link


def front_page(readme: str) -> str:
    """The README as the site's index: its links into docs/ become links between pages."""
    return re.sub(r"\]\(docs/", "](", readme)


def site_links(markdown: str) -> str:
    """A docs page's links out of docs/ (to the README, to reports/) as the site places them:
    the README is the index, the reports sit at reports/."""
    markdown = re.sub(r"\]\(\.\./README\.md", "](index.md", markdown)
    return re.sub(r"\]\(\.\./reports/", "](reports/", markdown)


# ------------------------------------------------------------------ the hooks


def on_files(files: Any, config: Any, **_: Any) -> Any:
    from mkdocs.structure.files import File, InclusionLevel

    files.append(
        File.generated(config, "index.md", content=front_page((ROOT / "README.md").read_text()))
    )
    for path in sorted((ROOT / "reports").rglob("*")):
        if path.is_file() and path.suffix in REPORT_SUFFIXES:
            uri = path.relative_to(ROOT).as_posix()
            # Reached by the pages' links, not the nav (a docs page missing from the nav fails).
            files.append(
                File.generated(
                    config, uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV
                )
            )
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri.startswith("reports/"):
        return markdown
    markdown = render(markdown)
    return markdown if page.file.src_uri == "index.md" else site_links(markdown)
