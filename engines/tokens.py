"""The tokenizer both backends load, and the token ids of a likelihood read, which both feed in."""

from __future__ import annotations

from typing import Any

from engines.base import InputError, LikelihoodRequest


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        # Causal LMs often ship without a pad token; any id works since padding is masked out.
        tok.pad_token = tok.eos_token
    return tok


def likelihood_token_ids(tokenizer: Any, request: LikelihoodRequest) -> tuple[list[int], int]:
    """(prompt ids + completion ids + EOS, number of prompt ids): the tokens a policy was trained
    on (training.data renders SFT examples the same way), so both backends read exactly these."""
    prompt = tokenizer.encode(request.prompt, add_special_tokens=False)
    completion = tokenizer.encode(request.completion, add_special_tokens=False)
    if not prompt:
        raise InputError("prompt: a prompt is empty")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [*prompt, *completion, *eos], len(prompt)
