"""Fine-tuning an existing HF causal LM (the real-model recipe's path), on a small local one:
STEP_TAG is added as a special token, embeddings are resized, and LoRA adapters are merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from engines.text import STEP_TAG

ROOT = Path(__file__).resolve().parents[3]


def make_base_model(path: Path) -> int:
    """A 'pretrained' model whose tokenizer knows no step tag and has no pad token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        ["Tom has 3 apples. The answer is 5.", "Question: Answer:"] * 10,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return len(fast)


def test_a_base_model_is_fine_tuned_with_lora_and_saved_plain_with_the_step_tag(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base"
    vocab = make_base_model(base)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "glore.cli", "train", "policy", "--preset", "smoke",
        "--out", str(out), f"model.base={base}", "model.lora=true", "model.lora_r=4",
        "policy.epochs=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tok = AutoTokenizer.from_pretrained(out / "policy")
    assert tok.encode(STEP_TAG, add_special_tokens=False) == [vocab]  # one new token at the end
    assert tok.pad_token is not None
    model = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert not any("lora" in name for name, _ in model.named_parameters())
    metrics = json.loads((out / "policy" / "metrics.json").read_text())
    assert metrics["sft"]["steps"] > 0
    assert metrics["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert 0 < metrics["parameters"]["trained"] < metrics["parameters"]["total"]
