"""`glore train` end to end on the smoke preset: five loadable checkpoints, a manifest, reruns
that skip finished stages, rollouts that resume after a SIGKILL, and 2-process training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.base import EngineSpec, Role, SamplingParams, ScoreRequest
from engines.text import text_fingerprint
from training.pipeline import stage_seed
from training.rollouts import read_heldout, read_rollouts

ROOT = Path(__file__).resolve().parents[3]
GLORE = [sys.executable, "-m", "glore.cli", "train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}


def glore_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*GLORE, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# `smoke_run` (tests/support/fixtures.py) is trained once per session by `glore train all
# --preset smoke` and shared with the evaluation's tests; the tests here only read it or copy it.


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_train_all_smoke_finishes_every_stage_and_records_it(smoke_run: Path) -> None:
    m = manifest(smoke_run)
    stages = m["stages"]
    assert list(stages) == [
        "data", "policy", "rollouts", "orm", "sorm", "refiners", "reranker", "profile",
    ]  # fmt: skip
    for name, entry in stages.items():
        assert entry["status"] == "done", name
        assert entry["seconds"] >= 0 and entry["seed"] >= 0 and entry["config_hash"]
        # each stage's seed comes from its name; the text contract it was trained under is kept
        assert entry["seed"] == stage_seed(m["seed"], name)
        assert entry["text_fingerprint"] == text_fingerprint()
        assert entry["hashes"], name
    assert stages["data"]["counts"] == {"train": 48, "val": 8, "test": 16}
    assert 0 <= stages["policy"]["metrics"]["test"]["greedy_accuracy"] <= 1
    assert stages["rollouts"]["counts"]["drafts"] > 0
    assert 0 <= stages["rollouts"]["metrics"]["vstar_vs_exact"]["rate"] <= 1
    assert stages["refiners"]["counts"]["refine_global"]["pairs"] > 0
    assert stages["orm"]["counts"]["extra_drafts"] == 16  # 8 more questions x 2 drafts
    # both refiners also learn from those outcome-labelled drafts
    refiners = stages["refiners"]["counts"]
    assert refiners["refine_global"]["extra_drafts"] == 16
    assert refiners["refine_local"]["extra_drafts"] == 16
    assert refiners["refine_global"]["drafts"] == stages["rollouts"]["counts"]["drafts"] + 16
    # the reranker stage fits its variants on within-question pairs and names the default
    reranker = stages["reranker"]
    assert reranker["counts"]["samples"] > 0
    assert reranker["metrics"]["default"] in reranker["metrics"]["heldout_pairwise"]
    assert (smoke_run / "reranker" / "default.json").is_file()
    summary = m["summary"]
    assert (
        summary["policy_greedy_accuracy"] == stages["policy"]["metrics"]["test"]["greedy_accuracy"]
    )
    assert summary["vstar_vs_exact_disagreement"] is not None
    assert m["host"]["cpus"] >= 1 and m["total_seconds"] > 0


@pytest.mark.parametrize("role", list(Role))
def test_every_checkpoint_is_an_hf_directory_with_its_recipe_and_metrics(
    smoke_run: Path, role: Role
) -> None:
    ckpt = smoke_run / str(role)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "recipe.yaml"):
        assert (ckpt / name).is_file(), name
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert metrics["train" if role is not Role.POLICY else "sft"]["losses"]
    arch = json.loads((ckpt / "config.json").read_text())["architectures"][0]
    assert arch == ("LlamaForTokenClassification" if role.is_scorer else "LlamaForCausalLM")


def test_a_trained_run_is_self_contained_and_readable_by_any_user(smoke_run: Path) -> None:
    # Mounted read-only at /models in a container whose server is another user (uid 10001): a
    # symlink would point outside the mount, and a 0600 file could not be read.
    paths = [smoke_run, *smoke_run.rglob("*")]
    assert [p for p in paths if p.is_symlink()] == []
    unreadable = [p for p in paths if p.stat().st_mode & 0o004 == 0]
    assert unreadable == []
    closed = [p for p in paths if p.is_dir() and p.stat().st_mode & 0o001 == 0]
    assert closed == []


async def test_the_five_checkpoints_load_and_answer_through_the_engines(smoke_run: Path) -> None:
    from engines.registry import load_engines

    engines = load_engines({r: EngineSpec(path=str(smoke_run / str(r))) for r in Role})
    try:
        for role in (Role.POLICY, Role.REFINE_GLOBAL, Role.REFINE_LOCAL):
            out = await engines.generator(role).generate(
                ["Question: Tom has 3 apples. How many?\nAnswer:\n"],
                SamplingParams(max_new_tokens=8),
            )
            assert len(out) == 1 and out[0][0].num_tokens >= 1
        for role in (Role.ORM, Role.SORM):
            (scores,) = await engines.scorer(role).score(
                [ScoreRequest("Tom has 3 apples. How many?", ("3 + 0 = 3.", "The answer is 3."))]
            )
            assert len(scores.step_probs) == 2
            assert all(0 <= p <= 1 for p in scores.step_probs)
    finally:
        await engines.close()


def test_a_rerun_skips_every_finished_stage(smoke_run: Path) -> None:
    before = manifest(smoke_run)
    start = time.perf_counter()
    proc = glore_train("all", "--preset", "smoke", "--out", str(smoke_run))
    assert proc.stdout.count("skipped") == len(before["stages"]) == 8, proc.stdout
    after = manifest(smoke_run)
    for name, entry in before["stages"].items():
        assert after["stages"][name]["finished"] == entry["finished"], name
    assert time.perf_counter() - start < 60


def test_the_profile_stage_writes_thresholds_chosen_on_validation(smoke_run: Path) -> None:
    from service.profile import read_profile

    m = manifest(smoke_run)
    entry = m["stages"]["profile"]
    profile = read_profile(smoke_run)
    assert profile is not None
    assert entry["metrics"]["thresholds"] == profile.thresholds.model_dump()
    assert m["summary"]["profile_thresholds"] == entry["metrics"]["thresholds"]
    assert entry["hashes"]["profile"]
    # the words the 48 training questions and their solutions use, names among them
    train = [json.loads(line) for line in (smoke_run / "data" / "train.jsonl").open()]
    assert train[0]["question"].split()[0] in profile.known_words
    assert entry["counts"]["known_words"] == len(profile.known_words) > 10
    # chosen on the 8 validation questions: at most 1% of them (none of 8) warned
    warned = entry["metrics"]["warned"]
    assert warned["val"] == {"questions": 8, "any": 0, "by_code": {}}
    lowest = entry["metrics"]["mean_logprob"]["val"]["min"]
    assert profile.thresholds.mean_logprob == pytest.approx(lowest, abs=1e-4)
    assert profile.thresholds.unseen_share == 0.1  # the recipe's floor: no val word is unseen
    # every word spelled backwards: unseen words, and the policy finds them unlikely
    probe = warned["probe_reversed_words"]
    assert probe["by_code"]["unseen_words"] == probe["questions"] == 8
    # the longest of the 48 training questions, in the policy's tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smoke_run / "tokenizer"))
    longest = max(len(tok.encode(" " + t["question"], add_special_tokens=False)) for t in train)
    assert profile.thresholds.max_tokens == longest


def test_the_profile_stage_runs_alone_on_a_finished_run_without_retraining(
    smoke_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("question_profile.json"))
    m = manifest(run)
    m["stages"].pop("profile")
    (run / "manifest.json").write_text(json.dumps(m))
    weights = {p: p.read_bytes() for p in run.glob("*/model.safetensors")}
    # no --preset: the run's own recipe (a run of another preset would otherwise retrain)
    proc = glore_train("profile", "--out", str(run))
    assert "data: done earlier, skipped" in proc.stdout and "profile: done" in proc.stdout
    after = manifest(run)
    assert after["stages"]["profile"]["status"] == "done"
    for name, entry in m["stages"].items():
        assert after["stages"][name]["finished"] == entry["finished"], name
    assert {p: p.read_bytes() for p in run.glob("*/model.safetensors")} == weights
    # the same data, policy and recipe give the same profile, byte for byte
    assert (run / "question_profile.json").read_bytes() == (
        smoke_run / "question_profile.json"
    ).read_bytes()


def test_rollouts_killed_midway_resume_with_no_row_lost_or_duplicated(
    smoke_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("rollouts"))
    m = manifest(run)
    for stage in ("rollouts", "orm", "sorm", "refiners"):
        m["stages"].pop(stage)
    (run / "manifest.json").write_text(json.dumps(m))
    shards = run / "rollouts"
    proc = subprocess.Popen(
        [*GLORE, "rollouts", "--preset", "smoke", "--out", str(run)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (shards / "shard-00000.jsonl").exists():
        assert proc.poll() is None, "the run ended before writing a shard"
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in shards.glob("shard-*.jsonl"))
    assert 1 <= len(done) < 6, f"the kill came too late to test a resume: {done}"
    assert manifest(run)["stages"]["rollouts"]["status"] == "running"

    proc2 = glore_train("rollouts", "--preset", "smoke", "--out", str(run))
    assert "resuming" in proc2.stderr
    resumed = read_rollouts(shards)
    reference = read_rollouts(smoke_run / "rollouts")
    keys = [r.key for r in resumed]
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert sorted(keys) == sorted(r.key for r in reference), "lost or extra rows"
    # sampling is seeded per shard, so the rows are the very ones of the uninterrupted run
    assert resumed == reference
    assert read_heldout(shards) == read_heldout(smoke_run / "rollouts")
    assert manifest(run)["stages"]["rollouts"]["status"] == "done"
    assert manifest(run)["stages"]["rollouts"]["metrics"]["resumed_shards"] == len(done)


def test_the_policy_stage_trains_under_accelerate_launch_with_two_cpu_processes(
    smoke_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --multi_gpu is accelerate's torchrun launcher; without CUDA each process joins a gloo group
    # on the CPU. A user with 8 GPUs runs the same command with --num_processes 8.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "glore.cli", "train", "policy", "--preset", "smoke", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = manifest(out)
    assert m["processes"] == 2
    assert m["stages"]["policy"]["status"] == "done"
    two = json.loads((out / "policy" / "metrics.json").read_text())["sft"]
    one = json.loads((smoke_run / "policy" / "metrics.json").read_text())["sft"]
    # each process takes every other batch: half the optimizer steps, all the examples
    assert two["steps"] == one["steps"] // 2
    assert two["examples"] * 2 == one["examples"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "policy")


async def test_refiners_as_adapters_are_saved_unmerged_and_served_over_the_policy(
    smoke_run: Path, tmp_path: Path
) -> None:
    from engines.registry import load_engines, run_dir_specs

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("refine_*", "reranker"))
    glore_train("refiners", "--preset", "smoke", "--out", str(run), "refiners.adapters=true")
    for role in ("refine_global", "refine_local"):
        folder = run / role
        assert not (folder / "config.json").exists()  # no merged copy of the policy
        assert (folder / "adapter_model.safetensors").is_file()
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "../policy"
    serving = manifest(run)["stages"]["refiners"]["serving"]
    assert serving["refine_local"] == {"base": "policy", "adapter": "refine_local"}
    engines = load_engines(run_dir_specs(run, options={"device": "cpu"}))
    try:
        views = [engines.policy, engines.refine_global, engines.refine_local]
        assert len({id(v.batcher) for v in views}) == 1  # type: ignore[attr-defined]
        prompt = ["Question: Ann has 2 pens. Ann gets 3 more. How many pens?\nAnswer:\n"]
        params = SamplingParams(max_new_tokens=16)
        for view in views:
            ((completion,),) = await view.generate(prompt, params)
            assert completion.num_tokens > 0
    finally:
        await engines.close()
