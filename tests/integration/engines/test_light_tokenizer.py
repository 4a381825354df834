"""The torch-free tokenizer of the remote backend reads a checkpoint exactly as transformers
does: the same ids, EOS and offsets (the question profile reads those)."""

from __future__ import annotations

from engines.text import global_refine_prompt, join_steps, policy_prompt, reward_input
from engines.tokens import LightTokenizer, load_tokenizer
from tests.support.tiny_models import TinyCheckpoints, tiny_problems


def test_the_light_tokenizer_gives_transformers_ids_eos_and_offsets(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    light = LightTokenizer(str(tiny_checkpoints.policy))
    full = load_tokenizer(str(tiny_checkpoints.policy))
    texts = []
    for p in tiny_problems(8, seed=7):
        texts += [policy_prompt(p.question), global_refine_prompt(p.question, join_steps(p.steps))]
        texts.append(reward_input(p.question, p.steps))
    texts.append("Zyx unseen wörds </s> and <|step|> tags")
    for text in texts:
        assert light.encode(text, add_special_tokens=False) == full.encode(
            text, add_special_tokens=False
        )
        mine = light(text, add_special_tokens=False, return_offsets_mapping=True)
        theirs = full(text, add_special_tokens=False, return_offsets_mapping=True)
        assert mine["input_ids"] == theirs["input_ids"]
        assert [tuple(o) for o in mine["offset_mapping"]] == [
            tuple(o) for o in theirs["offset_mapping"]
        ]
    assert light.eos_token_id == full.eos_token_id
