"""Training as one declared graph: the stage specs, the runner that reads them, and the
regression literals that keep a run trained by earlier code from looking stale.

The literals below were recorded from the code before the graph existed (parallel tables in
training/pipeline.py): every stage's inputs hash for the tiny, smoke and tiny-narrow presets over
a fixed fake manifest, and a hash of each preset's resolved recipe. A change to either makes
every trained run retrain (or its recipe.yaml differ), so it must be deliberate; the tiny
reranker literal and recipe hash were updated once, deliberately, when the tiny recipe changed
its reranker.default (a choice made on the dev split), which reruns the reranker stage only.
On 2026-12-06 the tiny recipe became a new default (the old one is kept as tiny-wide, with the
same inputs hashes), and every resolved recipe gained `checkpoint_minutes`, a field left out of
the inputs hashes (it changes how a stage runs, not what it makes), so no finished run goes stale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from training import graph, pipeline
from training.config import RECIPES_DIR, load_config

INPUT_HASHES = {
    "tiny": {  # the default of 2026-12-06: made-up words, 5x the steps (recipe tiny.yaml)
        "data": "a29eca3f0a79850f",
        "policy": "de6f479b0c8af6d6",
        "rollouts": "8ed0fbafeb96530f",
        "orm": "c8b8f439cdfa2820",
        "sorm": "e1e562f1e8e9da60",
        "refiners": "de787ce1ed4d772d",
        "reranker": "7b51e6c12ec4cf72",
        "profile": "59d22bc0d0fbb6f2",
    },
    "tiny-wide": {  # the default before it, renamed: its hashes are unchanged
        "data": "14133ae03a801818",
        "policy": "55c0edeebce7cb19",
        "rollouts": "92bfa137b938dbce",
        "orm": "5bad35fee0821074",
        "sorm": "2ab3c77089ed4f19",
        "refiners": "6e4d0824342e053e",
        "reranker": "a0457e2315895af0",  # reranker.default: lp_orm_kind (chosen on dev)
        "profile": "8c84e6f35688fc76",
    },
    "smoke": {
        "data": "0af01ae691a8439c",
        "policy": "f41fad146a80575f",
        "rollouts": "09831ee682b4dbea",
        "orm": "c4a40eada88eaf9e",
        "sorm": "dec95e5f27b1ddb4",
        "refiners": "bd5ec07d32a4053a",
        "reranker": "91d28bb98028e082",
        "profile": "226c409c34d2aa48",
    },
    "tiny-narrow": {
        "data": "9b7586fdb24432f5",
        "policy": "db03a5a98ee2a083",
        "rollouts": "048bd8c9b15955c9",
        "orm": "d8456ebb5604db08",
        "sorm": "9a8b4dc5da3c1b10",
        "refiners": "bab7368f85658fc5",
        "reranker": "3b35fa762d58092c",
        "profile": "366838ea3daf0a66",
    },
}
RECIPE_HASHES = {
    "tiny": "9a6e124624058a28",
    "tiny-wide": "c3e30b0a518ec589",
    "smoke": "aa3b170ffd2af80d",
    "tiny-narrow": "5c790a9a8f9963eb",
    "example-gsm8k": "4fde0cfaa4d1d4a0",
}
STAGE_NAMES = ("data", "policy", "rollouts", "orm", "sorm", "refiners", "reranker", "profile")


def _fake_manifest() -> graph.Manifest:
    stages = {s: {"status": "done", "hashes": {s: f"hash-of-{s}"}} for s in STAGE_NAMES}
    return graph.Manifest(Path("/nonexistent/manifest.json"), {"stages": stages})


@pytest.mark.parametrize("preset", sorted(INPUT_HASHES))
def test_inputs_hashes_are_those_of_the_code_before_the_graph(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The text contract's fingerprint is part of every hash; fixed here so that a deliberate
    # change of the contract (which does make runs stale) does not read as a change of the graph.
    monkeypatch.setattr(graph, "text_fingerprint", lambda: "fixed-text-fingerprint")
    cfg, manifest = load_config(preset=preset), _fake_manifest()
    got = {s: graph.inputs_hash(pipeline.GRAPH, cfg, manifest, s) for s in STAGE_NAMES}
    assert got == INPUT_HASHES[preset]


@pytest.mark.parametrize("preset", sorted(RECIPE_HASHES))
def test_every_resolved_recipe_is_what_it_was(preset: str) -> None:
    if preset == "example-gsm8k":
        cfg = load_config(
            recipe=RECIPES_DIR / "example-gsm8k.yaml", overrides=["data.gsm8k_dir=/data/gsm8k"]
        )
    else:
        cfg = load_config(preset=preset)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == RECIPE_HASHES[preset]


# ------------------------------------------------------------------ the graph itself


def test_the_shipped_graph_is_declared_once_and_read_by_the_cli() -> None:
    from training import cli, stages

    names = [s.name for s in pipeline.STAGES]
    assert names == list(stages.NAMES)
    assert pipeline.GRAPH.root.name == "data" and not pipeline.GRAPH.root.upstream
    # the command line offers every stage but the root, which every run starts with
    assert ("all", *names[1:]) == cli.CHOICES
    seeds = {pipeline.stage_seed(0, n) for n in names}
    assert len(seeds) == len(names)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (lambda s: (*s, s[1]), "declared twice"),
        (lambda s: (s[0], s[2], s[1]), "not declared before"),
        (lambda s: s[1:], "root"),
    ],
)
def test_a_graph_that_cannot_run_is_refused(specs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        graph.Graph(specs(pipeline.STAGES))


def test_a_new_stage_is_one_spec_and_one_function(tmp_path: Path) -> None:
    """A throwaway stage, declared beside the shipped ones and nowhere else: the runner runs it
    with a seed of its own, skips it when done, and reruns it when its inputs or outputs change."""
    seeds: list[int] = []

    def stage_extra(run: graph.Run, seed: int) -> graph.Report:
        seeds.append(seed)
        out = run.out / "extra" / "out.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text(f"{run.cfg.policy.lr} {len(run.problems('train'))}\n")
        return {"counts": {"questions": len(run.problems("train"))}, "hashes": {"extra": "x"}}

    extra = graph.StageSpec(
        name="extra",
        sections=("policy",),
        upstream=("data",),
        outputs=("extra/out.txt",),
        run=stage_extra,
        summary=lambda entry: {"extra_questions": graph.dig(entry, "counts", "questions")},
    )
    specs = (*pipeline.STAGES, extra)
    cfg = load_config(preset="smoke")
    m = pipeline.run_stages(cfg, tmp_path, ["extra"], specs=specs)

    own = pipeline.stage_seed(cfg.seed, "extra")
    assert seeds == [own]
    assert own not in {pipeline.stage_seed(cfg.seed, s.name) for s in pipeline.STAGES}
    entry = m.data["stages"]["extra"]
    assert entry["status"] == "done" and entry["seed"] == own
    assert list(m.data["stages"]) == ["data", "extra"]  # only the root and the stage named
    assert m.data["summary"]["extra_questions"] == 48
    assert (tmp_path / "extra" / "out.txt").read_text() == f"{cfg.policy.lr} 48\n"

    # done: a rerun skips it; a change in a section it does not read leaves it done
    pipeline.run_stages(cfg, tmp_path, ["extra"], specs=specs)
    other = load_config(preset="smoke", overrides=["orm.lr=0.5"])
    pipeline.run_stages(other, tmp_path, ["extra"], specs=specs)
    assert seeds == [own]
    # its outputs gone, or its own section changed: it runs again
    (tmp_path / "extra" / "out.txt").unlink()
    pipeline.run_stages(cfg, tmp_path, ["extra"], specs=specs)
    assert len(seeds) == 2
    changed = load_config(preset="smoke", overrides=["policy.lr=0.5"])
    pipeline.run_stages(changed, tmp_path, ["extra"], specs=specs)
    assert seeds == [own] * 3
    assert (tmp_path / "extra" / "out.txt").read_text() == "0.5 48\n"

    # and nothing else moved: the shipped stages hash as they did without it
    manifest = _fake_manifest()
    for s in STAGE_NAMES:
        assert graph.inputs_hash(graph.Graph(specs), cfg, manifest, s) == graph.inputs_hash(
            pipeline.GRAPH, cfg, manifest, s
        )


def test_the_summary_has_the_headline_figures_it_had() -> None:
    keys = {
        "policy_greedy_accuracy", "rollout_draft_accuracy", "vstar_vs_exact_disagreement",
        "vstar_vs_exact_disagreement_no_consistency", "orm_outcome_auc", "orm_step_auc",
        "sorm_outcome_auc", "sorm_step_auc", "refine_global_fix_rate", "refine_global_keep_rate",
        "refine_local_fix_rate", "refine_local_keep_rate", "reranker_default",
        "profile_thresholds", "reranker_heldout_pairwise",
    }  # fmt: skip
    empty = graph.summary(pipeline.GRAPH, {})
    assert set(empty) == keys
    assert empty["reranker_heldout_pairwise"] == {}
    assert all(v is None for k, v in empty.items() if k != "reranker_heldout_pairwise")
    stages = {
        "policy": {"metrics": {"test": {"greedy_accuracy": 0.5}}},
        "sorm": {"metrics": {"heldout": {"step_auc": 0.7}}},
        "refiners": {"metrics": {"refine_local": {"heldout": {"keep_rate": 0.9}}}},
        "reranker": {"metrics": {"heldout_pairwise": {"lp_kind": {"pairwise": 0.6, "n": 3}}}},
    }
    got = graph.summary(pipeline.GRAPH, stages)
    assert got["policy_greedy_accuracy"] == 0.5 and got["sorm_step_auc"] == 0.7
    assert got["refine_local_keep_rate"] == 0.9 and got["refine_global_keep_rate"] is None
    assert got["reranker_heldout_pairwise"] == {"lp_kind": 0.6}
