"""The real-model path end to end: `example-gsm8k.yaml` itself, with sizes overridden, on a base
model directory (the stand-in of training.standin) and GSM8K's own files. All five stages and one
round of expert iteration, rollouts on both backends, LoRA, `glore serve` on each backend and
`glore eval --data` on GSM8K test questions. It asserts files, tokens, shapes, the `#### N`
answers and the manifest, not accuracy: the stand-in is not expected to solve GSM8K.

On a GPU, `scripts/gpu-check.sh` runs this file with GLORE_E2E_GPU=1: the recipe's own dtype and
rollout backend, and vLLM without CPU options.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from transformers import AutoConfig, AutoTokenizer

from engines.text import STEP_TAG, normalize_number
from tests.support.server import start_server
from tests.support.standin_model import GSM8K_DIR
from training.tasks import load_problems

ROOT = Path(__file__).resolve().parents[3]
GPU = os.environ.get("GLORE_E2E_GPU") == "1"
RECIPE = "example-gsm8k.yaml"
# The data as a user gives it: a path on the command line (relative to where glore runs).
DATA = f"data.gsm8k_dir={os.path.relpath(GSM8K_DIR, ROOT)}"
# Size overrides only: a few dozen questions, a few steps per stage.
SIZES = [
    "data.n_train=24", "data.n_val=4", "data.n_test=6",
    "policy.max_steps=3", "policy.batch_size=4", "policy.grad_accum=1",
    "policy.warmup_steps=1", "policy.eval_questions=3", "policy.max_new_tokens=40",
    "expert_iteration.samples=2", "expert_iteration.questions=4",
    "rollouts.questions=6", "rollouts.drafts=2", "rollouts.k=2", "rollouts.max_new_tokens=40",
    "rollouts.max_steps=4", "rollouts.shard_questions=3", "rollouts.heldout_questions=3",
    "rollouts.heldout_drafts=1",
    "orm.max_steps=2", "orm.batch_size=4", "orm.grad_accum=1", "orm.warmup_steps=1",
    "sorm.max_steps=2", "sorm.batch_size=4", "sorm.grad_accum=1", "sorm.warmup_steps=1",
    "refiners.max_steps=2", "refiners.batch_size=2", "refiners.grad_accum=1",
    "refiners.warmup_steps=1", "refiners.eval_drafts=2", "refiners.max_new_tokens=40",
    "reranker.candidate_questions=3",
]  # fmt: skip
# The machine's, not the recipe's: on CPU 2 threads and float32 (vLLM's CPU backend). The main
# run samples on HF; the recipe's own backend, vLLM, runs the rollouts again on a copy of it.
CPU = [] if GPU else ["threads=2", "model.dtype=float32"]
HF_ROLLOUTS = "rollouts.backend=hf"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "2",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}
# Five engines share one GPU in `glore serve`, so each takes a small share of its memory.
VLLM_OPTIONS = json.dumps({"gpu_memory_utilization": 0.15} if GPU else {"cpu_kvcache_space_gib": 1})
ROLES = ("policy", "orm", "sorm", "refine_global", "refine_local")
TIMES: dict[str, float] = {}

# `glore serve` on vLLM starts five engines: minutes on a shared CPU, past the suite's 900 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def glore(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "glore.cli", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    TIMES[" ".join(args[:2])] = TIMES.get(" ".join(args[:2]), 0) + time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def gsm8k_run(standin_base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`glore train all` on the recipe, from the stand-in, with LoRA adapters on every model."""
    out = tmp_path_factory.mktemp("gsm8k") / "run"
    glore(
        "train", "all", "--recipe", RECIPE, "--out", str(out),
        f"model.base={standin_base_model}", DATA, "model.lora=true", *SIZES, *CPU, HF_ROLLOUTS,
    )  # fmt: skip
    return out


def test_all_five_stages_and_an_expert_iteration_round_finish_on_the_base_model(
    gsm8k_run: Path, standin_base_model: Path
) -> None:
    manifest = json.loads((gsm8k_run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert list(stages) == [
        "data", "policy", "rollouts", "orm", "sorm", "refiners", "reranker", "profile",
    ]  # fmt: skip
    assert all(s["status"] == "done" for s in stages.values()), stages
    assert stages["data"]["counts"] == {"train": 24, "val": 4, "test": 6}
    assert stages["policy"]["counts"]["train_examples"] == 24
    assert "ei_round_0_examples" in stages["policy"]["counts"]  # one round of expert iteration
    policy_metrics = json.loads((gsm8k_run / "policy" / "metrics.json").read_text())
    assert policy_metrics["ei_round_0"]["sampled"] == 4 * 2
    # LoRA: adapters trained (a small share of the weights), merged into a plain checkpoint
    params = policy_metrics["parameters"]
    assert 0 < params["trained"] < params["total"] / 2
    assert stages["rollouts"]["counts"]["questions"] == 6
    assert stages["rollouts"]["counts"]["drafts"] == 12
    for stage in ("orm", "sorm"):
        assert stages[stage]["counts"]["train_drafts"] > 0
    for role in ("refine_global", "refine_local"):
        assert stages["refiners"]["counts"][role]["pairs"] > 0
    assert (gsm8k_run / "reranker" / "default.json").is_file()
    recipe = (gsm8k_run / "recipe.yaml").read_text()
    assert f"base: {standin_base_model}" in recipe and "lora: true" in recipe


def test_the_step_tag_is_added_to_the_base_tokenizer_and_every_embedding_is_resized(
    gsm8k_run: Path, standin_base_model: Path
) -> None:
    base = AutoTokenizer.from_pretrained(standin_base_model)
    assert STEP_TAG not in base.get_vocab() and base.pad_token is None
    base_rows = AutoConfig.from_pretrained(standin_base_model).vocab_size
    for role in ROLES:
        ckpt = gsm8k_run / role
        tok = AutoTokenizer.from_pretrained(ckpt)
        assert tok.encode(STEP_TAG, add_special_tokens=False) == [len(base)], role
        assert STEP_TAG in tok.all_special_tokens
        assert tok.pad_token is not None
        # the base's own vocabulary is kept, token for token
        text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
        assert tok.encode(text) == base.encode(text)
        config = json.loads((ckpt / "config.json").read_text())
        assert config["vocab_size"] == len(tok) == base_rows + 1, role
        assert not list(ckpt.glob("adapter_*")), "LoRA adapters are merged, not saved apart"
        arch = config["architectures"][0]
        if role in ("orm", "sorm"):
            assert arch == "LlamaForTokenClassification" and len(config["id2label"]) == 2
        else:
            assert arch == "LlamaForCausalLM"


def test_gsm8k_answers_come_from_the_hash_line_and_prompts_have_gsm8k_length(
    gsm8k_run: Path,
) -> None:
    raw = {}
    for split in ("train", "test"):
        for line in (GSM8K_DIR / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            raw[record["question"].strip()] = record["answer"].rsplit("####", 1)[1]
    tok = AutoTokenizer.from_pretrained(gsm8k_run / "policy")
    lengths = []
    for split in ("train", "val", "test"):
        for p in load_problems(gsm8k_run / "data" / f"{split}.jsonl"):
            assert p.answer == normalize_number(raw[p.question]), p.id
            assert p.steps[-1] == f"The answer is {p.answer}."
            assert not any("<<" in s or "####" in s for s in p.steps)
            lengths.append(len(tok.encode(p.question + "\n".join(p.steps))))
    assert max(lengths) > 100  # GSM8K length, unlike the synthetic task's


@pytest.mark.vllm
def test_rollouts_run_on_vllm_too_with_the_recipes_own_backend(
    gsm8k_run: Path, standin_base_model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(gsm8k_run, copy)
    shutil.rmtree(copy / "rollouts")
    glore(
        "train", "rollouts", "--recipe", RECIPE, "--out", str(copy),
        f"model.base={standin_base_model}", DATA, "model.lora=true", *SIZES, *CPU,
    )  # fmt: skip
    stages = json.loads((copy / "manifest.json").read_text())["stages"]
    assert stages["rollouts"]["status"] == "done"
    hf = json.loads((gsm8k_run / "manifest.json").read_text())["stages"]["rollouts"]
    counts = stages["rollouts"]["counts"]
    for key in ("questions", "drafts", "heldout_drafts"):  # the same plan; other samples
        assert counts[key] == hf["counts"][key], key
    assert counts["steps"] > 0
    recipe = (copy / "recipe.yaml").read_text()
    assert "backend: vllm" in recipe
    assert sorted(p.name for p in (copy / "rollouts").glob("*.jsonl")) == sorted(
        p.name for p in (gsm8k_run / "rollouts").glob("*.jsonl")
    )


QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?"
)


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_glore_serve_loads_the_run_and_answers_a_gsm8k_question(
    gsm8k_run: Path, backend: str
) -> None:
    env = {"GLORE_LOG_LEVEL": "WARNING"}
    if backend == "vllm":
        env.update(VLLM_CPU_KVCACHE_SPACE="1")
        for role in ROLES:
            env[f"GLORE_{role.upper()}__BACKEND"] = "vllm"
            env[f"GLORE_{role.upper()}__OPTIONS"] = VLLM_OPTIONS
    start = time.monotonic()
    with (
        start_server(gsm8k_run, env=env, timeout=900) as server,
        httpx.Client(base_url=server.url, timeout=300) as client,
    ):
        ready = client.get("/ready").json()
        assert set(ready["roles"]) == set(ROLES)
        r = client.post(
            "/solve", json={"question": QUESTION, "refine": "always", "max_new_tokens": 40}
        )
        assert r.status_code == 200, r.text
        body = r.json()
    TIMES[f"serve {backend}"] = time.monotonic() - start
    labels = [c["label"] for c in body["candidates"]]
    # local only where the SORM flags a step (the paper refines globally only otherwise)
    assert labels in (["draft", "global", "local"], ["draft", "global"]), labels
    assert body["winner"] in {"draft", "global", "local"}
    assert body["steps"] and len(body["sorm_step_scores"]) == body["candidates"][0]["num_steps"]
    assert all(0.0 <= c["orm_score"] <= 1.0 for c in body["candidates"])


def test_glore_eval_writes_a_report_on_gsm8k_test_questions(
    gsm8k_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(gsm8k_run, run)  # a test evaluation writes into the run
    out = tmp_path / "report"
    proc = glore(
        "eval", "--run", str(run), "--out", str(out), "--data", str(GSM8K_DIR / "test.jsonl"),
        "--n", "4", "--n-val", "2", "--k", "2", "--max-new-tokens", "40",
    )  # fmt: skip
    assert f"report: {out}/report.md" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file()
    assert report["meta"]["n_test"] == 4 and report["meta"]["split"] == "test"
    assert Path(report["meta"]["data"]).resolve() == (GSM8K_DIR / "test.jsonl").resolve()
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    lines = (GSM8K_DIR / "test.jsonl").read_text().splitlines()[:4]
    expected = [normalize_number(json.loads(x)["answer"].rsplit("####", 1)[1]) for x in lines]
    assert [r["problem_id"] for r in records] == [f"gsm8k-test-{i}" for i in range(1, 5)]
    assert [r["reference"] for r in records] == expected  # read from each `#### N`
    for r in records:
        assert {"greedy", "glore", "best_of_3"} <= set(r["methods"])
        assert len(r["sorm_steps"]) == len(r["draft_steps"])


def test_zz_report_the_time_each_part_took() -> None:
    """Not a check: the timings reports/gsm8k-standin.md quotes (pytest -s shows them)."""
    print("\ngsm8k e2e timings (s): " + json.dumps({k: round(v, 1) for k, v in TIMES.items()}))
