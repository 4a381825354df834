"""Training as one declared graph: the stage specs, the runner that reads them, and the
regression literals that keep a run trained by earlier code from looking stale.

The literals below were recorded from the code before the graph existed (parallel tables in
training/pipeline.py): every stage's inputs hash for the tiny, smoke and tiny-narrow presets over
a fixed fake manifest, and a hash of each preset's resolved recipe. A change to either makes
every trained run retrain (or its recipe.yaml differ), so it must be deliberate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from training import graph, pipeline
from training.config import RECIPES_DIR, load_config

INPUT_HASHES = {
    "tiny": {
        "data": "14133ae03a801818",
        "policy": "55c0edeebce7cb19",
        "rollouts": "92bfa137b938dbce",
        "orm": "5bad35fee0821074",
        "sorm": "2ab3c77089ed4f19",
        "refiners": "6e4d0824342e053e",
        "reranker": "11b6192b9f059f85",
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
    "tiny": "c1ac10e481dda5e9",
    "smoke": "03fc5de30c00ae1c",
    "tiny-narrow": "ecd3b2ae84efa484",
    "example-gsm8k": "413594a773eb637a",
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
