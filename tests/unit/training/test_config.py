"""Recipes: presets, overrides, and clear errors that name the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.config import ConfigError, load_config


@pytest.mark.parametrize("preset", ["smoke", "tiny", "tiny-narrow"])
def test_every_preset_resolves_and_builds_its_task(preset: str) -> None:
    from training.tasks import TaskConfig

    cfg = load_config(preset=preset)
    assert cfg.name == preset
    TaskConfig.from_dict(cfg.data.task)
    assert cfg.rollouts.k >= 1


def test_the_example_gsm8k_recipe_resolves() -> None:
    from training.config import RECIPES_DIR

    data = "data.gsm8k_dir=/data/gsm8k"
    cfg = load_config(recipe=RECIPES_DIR / "example-gsm8k.yaml", overrides=[data])
    assert cfg == load_config(recipe="example-gsm8k.yaml", overrides=[data])
    assert cfg.data.source == "gsm8k"
    assert cfg.data.gsm8k_dir == "/data/gsm8k"
    assert cfg.model.base
    assert cfg.rollouts.k == 8


def test_overrides_are_read_as_yaml_and_applied_in_order() -> None:
    cfg = load_config(
        preset="smoke", overrides=["policy.lr=3e-4", "rollouts.k=5", "sorm.soft_labels=true"]
    )
    assert cfg.policy.lr == pytest.approx(3e-4)
    assert cfg.rollouts.k == 5
    assert cfg.sorm.soft_labels is True


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("policy.lrr=1", "policy.lrr"),
        ("rollouts.k=many", "rollouts.k"),
        ("policy.epochs=[1]", "policy.epochs"),
        ("nokey", "nokey"),
        ("orm.soft_labels=maybe", "orm.soft_labels"),
    ],
)
def test_a_bad_override_is_refused_with_the_field_named(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(preset="smoke", overrides=[override])


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="smoke"):
        load_config(preset="nope")


def test_glore_train_help_does_not_import_torch() -> None:
    code = (
        "import sys, argparse; import training.cli as c; p = argparse.ArgumentParser();"
        "c.add_arguments(p); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_glore_train_reports_a_bad_override_as_a_usage_error(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "glore.cli", "train", "policy", "--preset", "smoke",
         "--out", str(tmp_path / "r"), "rollouts.k=lots"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "rollouts.k" in proc.stderr


def test_the_gsm8k_recipe_names_no_data_path_and_asks_for_one_by_field() -> None:
    from training.config import RECIPES_DIR

    text = (RECIPES_DIR / "example-gsm8k.yaml").read_text()
    assert "shared" not in text and "../" not in text
    with pytest.raises(ConfigError, match=r"^data\.gsm8k_dir: required") as err:
        load_config(recipe="example-gsm8k.yaml")
    assert "data.hub" in str(err.value)  # the other way in is named too
    hub = load_config(recipe="example-gsm8k.yaml", overrides=["data.hub=openai/gsm8k"])
    assert hub.data.hub == "openai/gsm8k" and hub.data.gsm8k_dir is None
    with pytest.raises(ConfigError, match=r"data\.hub: give data\.gsm8k_dir or data\.hub"):
        load_config(recipe="example-gsm8k.yaml", overrides=["data.hub=x", "data.gsm8k_dir=y"])


def test_glore_train_without_gsm8k_data_exits_2_naming_the_field() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "glore.cli", "train", "policy", "--recipe", "example-gsm8k.yaml"],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "data.gsm8k_dir: required" in proc.stderr
    assert "Traceback" not in proc.stderr


def _config_classes() -> list[type]:
    """RunConfig and every dataclass it holds, found through the field types."""
    import dataclasses
    from typing import get_type_hints

    from training.config import RunConfig

    found, todo = [], [RunConfig]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += [h for h in get_type_hints(cls).values() if dataclasses.is_dataclass(h)]
    return found


def test_every_field_of_every_config_has_help_text() -> None:
    import dataclasses

    classes = _config_classes()
    assert {c.__name__ for c in classes} >= {"RunConfig", "OrmConfig", "SormConfig"}
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if not str(f.metadata.get("help", "")).strip()
    ]
    assert not missing, missing


def test_the_orm_and_the_sorm_have_configs_of_their_own() -> None:
    from training.config import OrmConfig, RunConfig, SormConfig

    cfg = load_config(preset="smoke", overrides=["orm.lr=2e-3", "sorm.soft_labels=true"])
    assert type(cfg.orm) is OrmConfig and type(cfg.sorm) is SormConfig
    assert cfg.orm.lr == pytest.approx(2e-3) and cfg.sorm.lr != cfg.orm.lr
    # no field help names the other model: each config speaks for its own
    import dataclasses

    for cls in (OrmConfig, SormConfig):
        for f in dataclasses.fields(cls):
            assert not f.metadata["help"].startswith(("ORM:", "SORM:")), f.name
    assert RunConfig().to_dict()["orm"].keys() == RunConfig().to_dict()["sorm"].keys()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("orm.soft_labels=true", r"^orm\.soft_labels: .*sorm\.soft_labels"),
        ("sorm.extra_questions=8", r"^sorm\.extra_questions: .*orm\.extra_questions"),
    ],
)
def test_an_option_of_the_other_reward_model_is_refused_naming_where_it_goes(
    override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(preset="smoke", overrides=[override])


def test_glore_train_takes_overrides_after_its_options_too() -> None:
    from glore.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "all", "rollouts.k=2", "--out", "r", "seed=1", "--force"])
    assert (args.stage, str(args.out), args.force) == ("all", "r", True)
    assert args.overrides == ["rollouts.k=2", "seed=1"]
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "all", "--out", "r", "stray"])  # not key=value: refused
