"""Models and tokenizers for training: a small Llama from scratch, or any HF causal LM to fine-tune.

Checkpoints are plain HF directories (config, safetensors, tokenizer) that both engines load:
causal LMs for the generators, token classifiers (2 labels, 1 = correct) for the ORM and SORM.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from engines.text import SPECIAL_TOKENS, STEP_TAG
from training.config import ModelConfig

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"model.dtype: unknown {name!r} (known: {', '.join(_DTYPES)})")
    return _DTYPES[name]


def base_tokenizer(
    cfg: ModelConfig, corpus: Iterable[str] | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer every model of a run shares.

    From scratch: byte-level BPE with single digits, trained on `corpus`. From a base model: its
    own tokenizer with STEP_TAG added as a special token and a pad token when it has none.
    """
    if cfg.base is None:
        from training.tokenizer import build_tokenizer

        if corpus is None:
            raise ValueError("a tokenizer from scratch needs a corpus")
        return build_tokenizer(corpus, vocab_size=cfg.vocab_size)
    tok = AutoTokenizer.from_pretrained(cfg.base)
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def new_policy(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """The policy's start: a fresh small Llama, or the base model with resized embeddings."""
    torch.manual_seed(seed)
    if cfg.base is None:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config)
    model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=dtype_of(cfg.dtype))
    return _fit_vocab(model, tokenizer)


def _fit_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    rows = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if rows < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_causal_lm(path: str | Path, cfg: ModelConfig) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype_of(cfg.dtype))


def load_reward_model(path: str | Path, cfg: ModelConfig, seed: int) -> PreTrainedModel:
    """A token classifier (2 labels) whose backbone comes from a causal LM checkpoint.

    The classification head is new, so it is initialised under `seed`.
    """
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(
        str(path),
        num_labels=2,
        id2label={0: "incorrect", 1: "correct"},
        label2id={"incorrect": 0, "correct": 1},
        dtype=dtype_of(cfg.dtype),
    )
    return model


def with_lora(model: PreTrainedModel, cfg: ModelConfig, *, classifier: bool) -> Any:
    """Wrap in LoRA adapters when the recipe asks; the classifier head is trained in full."""
    if not cfg.lora:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type=TaskType.TOKEN_CLS if classifier else TaskType.CAUSAL_LM,
        # the score head is new: it is learnt in full
        modules_to_save=["score"] if classifier else None,
    )
    return get_peft_model(model, lora)


def unwrap_lora(model: Any) -> PreTrainedModel:
    """The plain HF model to save: LoRA adapters merged into the weights."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def is_checkpoint(directory: Path) -> bool:
    """A full checkpoint (config.json) or a LoRA adapter of another one (adapter_config.json)."""
    return (directory / "config.json").exists() or (directory / "adapter_config.json").exists()


def save_adapter(
    model: Any, tokenizer: PreTrainedTokenizerBase, directory: Path, base: str
) -> None:
    """Write a peft model's LoRA adapter, unmerged, atomically; `base` (relative to `directory`,
    e.g. ../policy) is recorded as the adapter's base model, so the run folder can move."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    config_path = tmp / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(tmp))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def save_checkpoint(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
) -> None:
    """Write an HF directory atomically: into a sibling temp folder, then rename.

    A half-written checkpoint never looks finished, which is what lets a rerun skip stages.
    """
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model = unwrap_lora(model)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    make_world_readable(tmp)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def make_world_readable(directory: Path) -> None:
    """Files 0644 and folders 0755: transformers may write weights 0600, and a run is mounted
    into a container whose server runs as another user (uid 10001 in the Dockerfile)."""
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def step_tag_id(tokenizer: PreTrainedTokenizerBase) -> int:
    tid = tokenizer.convert_tokens_to_ids(STEP_TAG)
    if not isinstance(tid, int) or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer does not know the step tag {STEP_TAG!r}")
    return int(tid)
