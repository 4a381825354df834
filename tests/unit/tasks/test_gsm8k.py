"""The GSM8K loader: exact parsing of a hand-written record, clear errors, and every real line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.text import normalize_number
from training.tasks import check_solution, load_gsm8k, read_gsm8k
from training.tasks.gsm8k import parse_gsm8k_record

GSM8K_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "gsm8k"

RECORD = {
    "question": "Ann buys 3 boxes of 4 pens and 5 more pens. How many pens does she have?",
    "answer": (
        "Ann has 3*4=<<3*4=12>>12 pens in boxes.\n"
        "Then she has 12+5=$<<12+5=17>>17 pens.\n"
        "\n"
        "She is happy.\n"
        "#### 17"
    ),
}


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_hand_written_record_parses_to_exact_steps_values_and_answer(tmp_path: Path) -> None:
    (p,) = load_gsm8k(_write(tmp_path, [json.dumps(RECORD)]))
    assert p.id == "gsm8k-data-1"
    assert p.source == "gsm8k"
    assert p.question == RECORD["question"]
    assert p.steps == (
        "Ann has 3*4=12 pens in boxes.",
        "Then she has 12+5=$17 pens.",
        "She is happy.",
        "The answer is 17.",
    )
    assert p.step_values == ("12", "17", None, None)
    assert p.step_ops == (None,) * 4 and p.step_operands == (None,) * 4
    assert p.answer == "17"
    assert check_solution(p, p.solution).fully_correct


def test_answers_with_commas_dollars_and_decimals_are_normalised() -> None:
    for tail, want in (("1,000", "1000"), ("$5", "5"), ("-3", "-3"), ("2.50", "2.5")):
        rec = {"question": "q?", "answer": f"It is x.\n#### {tail}"}
        assert parse_gsm8k_record(rec, "x").answer == want


def test_an_annotation_the_line_does_not_state_gives_no_value() -> None:
    rec = {"question": "q?", "answer": "Half of it <<10/2=5>> is used.\n#### 5"}
    p = parse_gsm8k_record(rec, "x")
    assert p.steps == ("Half of it is used.", "The answer is 5.")
    assert p.step_values == (None, None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "record must be a JSON object"),
        (json.dumps({"answer": "#### 3"}), "missing field 'question'"),
        (json.dumps({"question": "q?"}), "missing field 'answer'"),
        (json.dumps({"question": "q?", "answer": ""}), "field 'answer' is empty"),
        (json.dumps({"question": "", "answer": "#### 1"}), "field 'question' is empty"),
        (json.dumps({"question": "q?", "answer": 3}), "field 'answer' must be a string"),
        (json.dumps({"question": "q?", "answer": "It is 3."}), "no '#### N' final answer"),
        (json.dumps({"question": "q?", "answer": "So.\n#### twelve"}), "non-numeric final answer"),
        (json.dumps({"question": "q?", "answer": "So.\n####"}), "non-numeric final answer"),
    ],
)
def test_malformed_lines_raise_value_errors_naming_line_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    path = _write(tmp_path, [json.dumps(RECORD), line])
    with pytest.raises(ValueError, match=rf"data\.jsonl:2: .*{message}"):
        load_gsm8k(path)


def test_non_strict_mode_skips_and_counts_malformed_lines(tmp_path: Path) -> None:
    lines = [json.dumps(RECORD), "{bad", json.dumps({"question": "q?"}), "", json.dumps(RECORD)]
    load = read_gsm8k(_write(tmp_path, lines), strict=False)
    assert [p.id for p in load.problems] == ["gsm8k-data-1", "gsm8k-data-5"]
    assert [s.line for s in load.skipped] == [2, 3]
    assert "invalid JSON" in load.skipped[0].reason
    assert "missing field 'answer'" in load.skipped[1].reason
    assert len(load_gsm8k(_write(tmp_path, lines), strict=False)) == 2


def test_unicode_records_load_unchanged(tmp_path: Path) -> None:
    rec = {
        "question": "Zoë’s café sells 3 crêpes — ¿cuántas? 🍰",
        "answer": "3×2=<<3*2=6>>6 €\n#### 6",
    }
    (p,) = load_gsm8k(_write(tmp_path, [json.dumps(rec, ensure_ascii=False)]))
    assert p.question == rec["question"]
    assert p.steps == ("3×2=6 €", "The answer is 6.")
    assert p.step_values == ("6", None)


@pytest.mark.skipif(not GSM8K_DIR.is_dir(), reason=f"GSM8K data not present at {GSM8K_DIR}")
def test_every_real_gsm8k_line_loads_with_a_numeric_answer_and_steps() -> None:
    counts = {}
    for split in ("test", "train"):
        problems = load_gsm8k(GSM8K_DIR / f"{split}.jsonl")
        counts[split] = len(problems)
        for p in problems:
            assert normalize_number(p.answer) == p.answer
            assert len(p.steps) >= 2  # at least one reasoning step, then the answer step
            assert check_solution(p, p.steps).fully_correct, p.id
    assert counts == {"test": 1319, "train": 7473}
    first = load_gsm8k(GSM8K_DIR / "test.jsonl")[0]
    assert first.steps == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer’s market.",
        "The answer is 18.",
    )
    assert first.step_values == ("9", "18", None)
    assert first.answer == "18"


def test_the_datasets_path_reads_a_local_gsm8k_folder_as_the_jsonl_loader_does(
    tmp_path: Path,
) -> None:
    """`data.hub` goes through `datasets.load_dataset`; a local folder takes the same path a hub
    id does, and gives the same problems, ids included, as the JSONL loader."""
    from training.tasks import load_gsm8k_hub

    other = {"question": "Bo has 2 hats and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"}
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(RECORD) + "\n" + json.dumps(other) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(other) + "\n")
    train = load_gsm8k_hub(str(folder), "train")
    assert train == load_gsm8k(folder / "train.jsonl")
    assert [p.id for p in train] == ["gsm8k-train-1", "gsm8k-train-2"]
    assert [p.answer for p in train] == ["17", "5"]
    assert load_gsm8k_hub(str(folder), "test") == load_gsm8k(folder / "test.jsonl")


def test_the_datasets_path_names_the_row_and_field_of_a_bad_record(tmp_path: Path) -> None:
    from training.tasks import load_gsm8k_hub

    folder = tmp_path / "gsm8k"
    folder.mkdir()
    bad = {"question": "How many?", "answer": "no final answer here"}
    (folder / "train.jsonl").write_text(json.dumps(RECORD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"\(train\) row 2: field 'answer' has no '#### N'"):
        load_gsm8k_hub(str(folder), "train")
    with pytest.raises(ValueError, match=r"data\.hub: cannot load"):
        load_gsm8k_hub(str(tmp_path / "missing"), "train")
