"""The GSM8K recipe's data stage reads what the user gives it: a folder (`data.gsm8k_dir`) or a
dataset through the `datasets` library (`data.hub`), and both give the same splits."""

from __future__ import annotations

import json
from pathlib import Path

from training.config import load_config
from training.pipeline import run_stages
from training.tasks import load_problems


def _records(n: int) -> list[str]:
    return [
        json.dumps(
            {
                "question": f"Ann has {i} pens and buys {i + 2} more. How many pens has she?",
                "answer": f"She has {i}+{i + 2}=<<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} pens.\n"
                f"#### {2 * i + 2}",
            }
        )
        for i in range(1, n + 1)
    ]


def test_a_folder_and_the_datasets_path_give_the_same_gsm8k_splits(tmp_path: Path) -> None:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(_records(12)) + "\n")
    (folder / "test.jsonl").write_text("\n".join(_records(3)) + "\n")
    sizes = ["data.source=gsm8k", "data.n_train=0", "data.n_val=2", "data.n_test=0"]
    splits = {}
    for name, data in (("dir", f"data.gsm8k_dir={folder}"), ("hub", f"data.hub={folder}")):
        cfg = load_config(preset="smoke", overrides=[*sizes, data])
        out = tmp_path / name
        manifest = run_stages(cfg, out, [])
        assert manifest.data["stages"]["data"]["counts"] == {"train": 10, "val": 2, "test": 3}
        splits[name] = {s: load_problems(out / "data" / f"{s}.jsonl") for s in ("train", "test")}
    assert splits["dir"] == splits["hub"]
    assert [p.answer for p in splits["hub"]["test"]] == ["4", "6", "8"]  # from each `#### N`
