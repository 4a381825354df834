"""An interrupted training loop resumes from its checkpoint and ends where an uninterrupted one
does: the same weights, the same logged losses, and the stage's throughput recorded."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.config import ModelConfig, RunConfig, TrainConfig
from training.modeling import base_tokenizer, new_policy
from training.policy import policy_examples
from training.stages.data import _corpus
from training.tasks import TaskConfig, generate_problems
from training.trainer import lm_loss, stage_session, train

MODEL = ModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
RUN = RunConfig(model=MODEL)
# checkpoint_minutes=0: a checkpoint after every update, so the interruption lands after one.
TRAIN = TrainConfig(
    epochs=2, batch_size=4, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_minutes=0.0
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here on one torch thread (the fixture in conftest.py)."""


@pytest.fixture(scope="module")
def data():
    problems = generate_problems(TaskConfig.tiny(), 16, seed=7)
    tok = base_tokenizer(MODEL, _corpus(problems))
    return tok, policy_examples(tok, problems)


class Interrupted(Exception):
    pass


def _loss_that_stops_at(call: int):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def loss(model, batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupted
        return lm_loss(model, batch)

    return loss


def _fit(tok, examples, session_dir, loss_fn=lm_loss):  # type: ignore[no-untyped-def]
    model = new_policy(MODEL, tok, seed=0)
    with stage_session(session_dir) as session:
        model, result = train(
            model, examples, _collate(), TRAIN, pad_id=tok.pad_token_id, seed=0, desc="policy SFT",
            loss_fn=loss_fn,
        )  # fmt: skip
    return model, result, session


def _collate():  # type: ignore[no-untyped-def]
    from training.data import collate_sft

    return collate_sft


def test_an_interrupted_loop_resumes_to_the_same_weights_as_one_that_never_stopped(
    data, tmp_path
) -> None:
    tok, examples = data
    whole, whole_result, _ = _fit(tok, examples, tmp_path / "whole")
    with pytest.raises(Interrupted):
        _fit(tok, examples, tmp_path / "resumed", _loss_that_stops_at(4))
    saved = list((tmp_path / "resumed").glob("*.pt"))
    assert [p.name for p in saved] == ["policy-SFT.pt"]
    assert torch.load(saved[0], weights_only=False)["step"] == 3
    resumed, result, session = _fit(tok, examples, tmp_path / "resumed")
    assert result.steps == whole_result.steps == 8
    assert result.losses == whole_result.losses
    for (name, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert session.throughput()["policy SFT"] > 0


def test_a_checkpoint_of_another_loop_is_ignored(data, tmp_path) -> None:
    tok, examples = data
    with pytest.raises(Interrupted):
        _fit(tok, examples, tmp_path, _loss_that_stops_at(3))
    other = dataclasses.replace(TRAIN, epochs=1)  # another length: not this loop's checkpoint
    model = new_policy(MODEL, tok, seed=0)
    with stage_session(tmp_path):
        _, result = train(
            model, examples, _collate(), other, pad_id=tok.pad_token_id, seed=0, desc="policy SFT"
        )
    assert result.steps == 4 and result.losses[0][0] == 1
