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


class LightTokenizer:
    """A checkpoint's `tokenizer.json` read by the `tokenizers` library alone: what an engine
    that holds no weights (the remote backend) and a replica without torch tokenize with.

    It answers the calls glore makes of a transformers tokenizer (`encode`, a call with
    offsets, `eos_token_id`) with the same ids: transformers' fast tokenizers are this library.
    """

    def __init__(self, path: str) -> None:
        import json
        from pathlib import Path

        from tokenizers import Tokenizer

        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        self._tok = Tokenizer.from_file(str(file))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.eos_token_id = self._special_id(config.get("eos_token"))
        self.pad_token_id = self._special_id(config.get("pad_token"))
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id

    def _special_id(self, token: Any) -> int | None:
        if isinstance(token, dict):  # older configs spell an AddedToken out
            token = token.get("content")
        if not isinstance(token, str):
            return None
        found = self._tok.token_to_id(token)
        return None if found is None else int(found)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def __call__(
        self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False
    ) -> dict[str, list[Any]]:
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, list[Any]] = {"input_ids": list(enc.ids)}
        if return_offsets_mapping:
            out["offset_mapping"] = [tuple(o) for o in enc.offsets]
        return out

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=skip_special_tokens))
