"""Problem's JSONL round trip and validation; TaskConfig's presets and recipe round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from training.tasks import (
    PRESETS,
    Problem,
    TaskConfig,
    generate_problems,
    load_problems,
    save_problems,
)


def _record(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "p-1",
        "question": "Ann has 2 apples and buys 3. How many?",
        "steps": ["Ann now has 2 + 3 = 5 apples.", "The answer is 5."],
        "answer": "5",
        "step_values": ["5", None],
        "source": "synthetic",
        "step_ops": ["+", None],
        "step_operands": [["2", "3"], None],
    }
    base.update(changes)
    return base


def test_problem_round_trips_through_json() -> None:
    for p in generate_problems(TaskConfig.hard(), 20, seed=1):
        assert Problem.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_problem_round_trips_through_a_jsonl_file(tmp_path: Path) -> None:
    problems = generate_problems(TaskConfig.easy(), 25, seed=2)
    path = tmp_path / "p.jsonl"
    assert save_problems(problems, path) == 25
    assert load_problems(path) == problems


def test_solution_joins_the_steps_with_newlines() -> None:
    p = Problem.from_dict(_record())
    assert p.solution == "Ann now has 2 + 3 = 5 apples.\nThe answer is 5."


def test_ops_and_operands_default_to_unknown() -> None:
    rec = _record()
    del rec["step_ops"], rec["step_operands"]
    p = Problem.from_dict(rec)
    assert p.step_ops == (None, None) and p.step_operands == (None, None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"answer": "five"}, "answer must be a normalised number"),
        ({"answer": "5.0"}, "answer must be a normalised number"),
        ({"steps": ["Ann now has 2 + 3 = 5 apples.", "The answer is 6."]}, "last step must be"),
        ({"steps": []}, "steps must be non-empty"),
        ({"steps": ["a\nb", "The answer is 5."]}, "step separator"),
        ({"step_values": ["5"]}, "step_values has 1 entries for 2 steps"),
        ({"step_values": ["5.0", None]}, "non-normalised"),
        ({"step_ops": ["^", None]}, "unknown operation"),
        ({"step_operands": [["2"], None]}, "must be pairs"),
        ({"source": "web"}, "source must be one of"),
        ({"question": "  "}, "question must be a non-empty string"),
        ({"steps": "The answer is 5."}, "steps must be a list"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_bad_problem_records_raise_value_errors_naming_the_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Problem.from_dict(_record(**changes))


def test_a_record_missing_a_field_names_it() -> None:
    rec = _record()
    del rec["answer"]
    with pytest.raises(ValueError, match="missing the field 'answer'"):
        Problem.from_dict(rec)


def test_a_bad_jsonl_line_is_named_by_number(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_record()) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:2:"):
        load_problems(path)


def test_presets_are_named_and_get_harder() -> None:
    presets = [TaskConfig.preset(n) for n in ("tiny", "easy", "medium", "hard")]
    assert [c.name for c in presets] == ["tiny", "easy", "medium", "hard"]
    assert set(PRESETS) == {"tiny", "easy", "medium", "hard", "wide"}
    assert TaskConfig.wide().family == "wide" and TaskConfig.tiny().family == "basic"
    assert [c.max_steps for c in presets] == sorted(c.max_steps for c in presets)
    assert [c.max_value for c in presets] == sorted(c.max_value for c in presets)
    assert TaskConfig.tiny().operations == ("+", "-", "*")
    assert TaskConfig.hard().operations == ("+", "-", "*", "/")


def test_config_round_trips_through_yaml() -> None:
    for name in PRESETS:
        cfg = TaskConfig.preset(name)
        assert TaskConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_a_recipe_can_start_from_a_preset_and_override_it() -> None:
    cfg = TaskConfig.from_dict({"preset": "easy", "max_steps": 5, "operations": ["+", "x"]})
    assert cfg.name == "easy"
    assert cfg.max_steps == 5
    assert cfg.operations == ("+", "*")
    assert cfg.start_max == TaskConfig.easy().start_max
    assert TaskConfig.from_dict(None) == TaskConfig()


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"max_step": 3}, r"unknown TaskConfig fields \['max_step'\]"),
        ({"preset": "impossible"}, "unknown task preset 'impossible'"),
        ({"operations": ["^"]}, "operations must be a non-empty subset"),
        ({"operations": []}, "operations must be a non-empty subset"),
        ({"operations": "+-"}, "operations must be a list"),
        ({"min_steps": 4, "max_steps": 2}, r"max_steps \(2\) must be >= min_steps \(4\)"),
        ({"min_steps": 0}, "min_steps must be at least 1"),
        ({"mul_min": 1}, "mul_min must be at least 2"),
        ({"div_max": 11}, "div_max must be at most 10"),
        ({"derive_prob": 1.5}, "derive_prob must be a probability"),
        ({"max_steps": "3"}, "max_steps must be an integer"),
        ({"max_value": 5, "start_max": 20}, "max_value"),
        ({"n_templates": 0}, "n_templates must be at least 1"),
        ({"family": "huge"}, "family must be one of"),
        ({"part": "test"}, "part must be one of"),
        ({"pronoun_prob": -0.1}, "pronoun_prob must be a probability"),
    ],
)
def test_bad_configs_raise_value_errors_naming_the_field(
    d: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TaskConfig.from_dict(d)
