"""One trainer test per stage on tiny models built here: the loss is logged and every trainable
parameter changed."""

from __future__ import annotations

import math

import pytest
import torch

from engines.text import STEP_TAG, policy_prompt
from training.config import ModelConfig, OrmConfig, RunConfig, SormConfig, TrainConfig
from training.data import IGNORE, collate_reward, reward_example, reward_loss, sft_example
from training.modeling import base_tokenizer, load_reward_model, new_policy, save_checkpoint
from training.pairs import global_pairs, local_pairs
from training.policy import fit_sft, policy_examples
from training.refiners import refine_examples
from training.reward import fit_reward, reward_examples
from training.stages.data import _corpus
from training.tasks import TaskConfig, generate_problems
from training.vstar import DraftRollout, orm_examples, sorm_examples

MODEL = ModelConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
RUN = RunConfig(model=MODEL)
TRAIN = TrainConfig(epochs=1, batch_size=4, lr=3e-3, warmup_steps=1, log_every=1, max_steps=3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here on one torch thread (the fixture in conftest.py)."""


@pytest.fixture(scope="module")
def problems():
    return generate_problems(TaskConfig.tiny(), 12, seed=5)


@pytest.fixture(scope="module")
def tokenizer(problems):
    return base_tokenizer(MODEL, _corpus(problems))


@pytest.fixture(scope="module")
def rollouts(problems) -> list[DraftRollout]:
    """Per question: the reference (correct) and a draft whose last computed step is wrong."""
    rows = []
    for p in problems:
        n = len(p.steps)
        rows.append(
            DraftRollout(p.id, 0, p.steps, p.answer, True, "stop", (True,) * n, (2,) * n, 2)
        )
        wrong = (*p.steps[:-1], "The answer is 999.")
        rows.append(
            DraftRollout(
                p.id,
                1,
                wrong,
                "999",
                False,
                "stop",
                (*(True,) * (n - 1), False),
                (*(1,) * (n - 1), 0),
                2,
                (*(p.steps[-1],) * (n - 1), None),
            )
        )
    return rows


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_all_changed(before, model) -> None:
    after = dict(model.named_parameters())
    unchanged = [n for n, t in before.items() if torch.equal(t, after[n].detach())]
    assert not unchanged, f"parameters that did not change: {unchanged}"


def _assert_loss_logged(result, steps: int) -> None:
    assert result.steps == steps
    assert result.losses and all(math.isfinite(v) for _, v in result.losses)
    assert result.losses[0][0] == 1


def test_sft_examples_put_the_loss_on_the_completion_and_eos_only(tokenizer, problems) -> None:
    p = problems[0]
    ex = sft_example(tokenizer, policy_prompt(p.question), p.solution)
    n_prompt = len(tokenizer(policy_prompt(p.question))["input_ids"])
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert ex.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex.input_ids[n_prompt:-1]) == p.solution


def test_reward_examples_label_exactly_the_step_tags(tokenizer, problems) -> None:
    p = problems[0]
    labels = [None] + [0.25] * (len(p.steps) - 1)
    ex = reward_example(tokenizer, p.question, p.steps, labels)
    tag = tokenizer.convert_tokens_to_ids(STEP_TAG)
    tags = [i for i, t in enumerate(ex.input_ids) if t == tag]
    assert len(tags) == len(p.steps)
    assert math.isnan(ex.targets[tags[0]])
    assert [ex.targets[i] for i in tags[1:]] == [0.25] * (len(p.steps) - 1)
    assert sum(not math.isnan(t) for t in ex.targets) == len(p.steps) - 1


def test_reward_loss_is_the_soft_cross_entropy_at_labelled_tags() -> None:
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])
    targets = torch.tensor([[math.nan, 1.0, 0.5]])
    # p1 = 0.75 at the first tag; p1 = sigmoid(-10) at the second, soft label 0.5
    p_second = torch.sigmoid(torch.tensor(-10.0))
    expected = -(math.log(0.75) + 0.5 * math.log(p_second) + 0.5 * math.log(1 - p_second)) / 2
    assert reward_loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    batch = collate_reward([reward_example_stub()], pad_id=0)
    assert torch.isnan(batch["targets"][0, 0])


def reward_example_stub():
    from training.data import RewardExample

    return RewardExample(input_ids=[5, 6], targets=[math.nan, 1.0])


def test_policy_sft_logs_its_loss_and_changes_every_parameter(tokenizer, problems) -> None:
    model = new_policy(MODEL, tokenizer, seed=0)
    before = _snapshot(model)
    model, result = fit_sft(
        model, tokenizer, policy_examples(tokenizer, problems), TRAIN, RUN, seed=0, desc="t"
    )
    _assert_loss_logged(result, 3)
    _assert_all_changed(before, model)


@pytest.mark.parametrize("kind", ["orm", "sorm"])
def test_reward_model_training_logs_its_loss_and_changes_every_parameter(
    kind, tokenizer, problems, rollouts, tmp_path
) -> None:
    policy = new_policy(MODEL, tokenizer, seed=0)
    save_checkpoint(policy, tokenizer, tmp_path / "policy")
    model = load_reward_model(tmp_path / "policy", MODEL, seed=0)
    assert model.config.num_labels == 2
    if kind == "orm":
        rows = orm_examples(rollouts)
    else:
        rows = sorm_examples(rollouts, seed=0, balance=False)
    by_id = {p.id: p for p in problems}
    examples = reward_examples(tokenizer, rows, by_id)
    before = _snapshot(model)
    cfg = (OrmConfig if kind == "orm" else SormConfig)(**{**TRAIN.__dict__})
    model, result = fit_reward(model, tokenizer, examples, cfg, RUN, seed=0, desc=kind)
    _assert_loss_logged(result, 3)
    _assert_all_changed(before, model)


@pytest.mark.parametrize("build", [global_pairs, local_pairs], ids=["global", "local"])
def test_refiner_sft_logs_its_loss_and_changes_every_parameter(
    build, tokenizer, problems, rollouts
) -> None:
    pairs = build(rollouts, {p.id: p for p in problems}, seed=0)
    assert any(p.kind == "fix" for p in pairs) and any(p.kind == "keep" for p in pairs)
    model = new_policy(MODEL, tokenizer, seed=1)
    before = _snapshot(model)
    model, result = fit_sft(
        model, tokenizer, refine_examples(tokenizer, pairs), TRAIN, RUN, seed=0, desc="ref"
    )
    _assert_loss_logged(result, 3)
    _assert_all_changed(before, model)


def test_training_is_deterministic_with_a_seed(tokenizer, problems) -> None:
    losses = []
    for _ in range(2):
        model = new_policy(MODEL, tokenizer, seed=3)
        _, result = fit_sft(
            model, tokenizer, policy_examples(tokenizer, problems), TRAIN, RUN, seed=3, desc="d"
        )
        losses.append(result.losses)
    assert losses[0] == losses[1]


def test_lora_trains_adapters_and_saves_a_plain_checkpoint(tokenizer, problems, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    run = RunConfig(model=ModelConfig(**{**MODEL.__dict__, "lora": True, "lora_r": 4}))
    model = new_policy(MODEL, tokenizer, seed=0)
    model, _ = fit_sft(
        model, tokenizer, policy_examples(tokenizer, problems), TRAIN, run, seed=0, desc="lora"
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert not any("lora" in n for n, _ in loaded.named_parameters())


def test_gradient_accumulation_takes_one_optimizer_step_per_group(tokenizer, problems) -> None:
    from dataclasses import replace

    cfg = replace(TRAIN, grad_accum=2, max_steps=None, epochs=1.0)
    model = new_policy(MODEL, tokenizer, seed=0)
    _, result = fit_sft(
        model, tokenizer, policy_examples(tokenizer, problems), cfg, RUN, seed=0, desc="acc"
    )
    # 12 examples, batches of 4: three micro-batches make a group of 2, then the tail steps alone
    assert result.examples == 12
    assert result.steps == 2
