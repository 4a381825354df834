"""Recipes: presets, overrides, and clear errors that name the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.config import ConfigError, load_config


@pytest.mark.parametrize("preset", ["smoke", "tiny", "tiny-wide"])
def test_every_preset_resolves_and_builds_its_task(preset: str) -> None:
    from training.tasks import TaskConfig

    cfg = load_config(preset=preset)
    assert cfg.name == preset
    TaskConfig.from_dict(cfg.data.task)
    assert cfg.rollouts.k >= 1


def test_the_example_gsm8k_recipe_resolves() -> None:
    from training.config import RECIPES_DIR

    cfg = load_config(recipe=RECIPES_DIR / "example-gsm8k.yaml")
    assert cfg == load_config(recipe="example-gsm8k.yaml")
    assert cfg.data.source == "gsm8k"
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
