"""A stand-in base model for the real-model path: a small Llama with its own subword tokenizer,
pretrained briefly on GSM8K's training text and saved as an ordinary Hugging Face directory.

No weights can be downloaded where CI runs, so `example-gsm8k.yaml` is proven end to end on this
instead of a real Llama. It is unlike the tiny preset on purpose: a byte-level BPE that keeps
numbers whole (no digit splitting), a BOS that the tokenizer adds by default, no pad token, no
STEP_TAG (the recipe must add it and resize the embeddings), untied input and output
embeddings, a chat template, and GSM8K's own text format (`<<a*b=c>>`, `#### N`).

    python -m training.standin --gsm8k-dir ../shared/data/gsm8k --out runs/standin-llama
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
# A Llama-3-style template: the path must not depend on it, but a real base model has one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def gsm8k_texts(gsm8k_dir: Path) -> list[str]:
    """GSM8K's training records as plain text (question, then the annotated answer)."""
    texts = []
    with (gsm8k_dir / "train.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                texts.append(f"{record['question'].strip()}\n{record['answer'].strip()}")
    if not texts:
        raise ValueError(f"--gsm8k-dir: {gsm8k_dir / 'train.jsonl'} has no records")
    return texts


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE trained on `texts`, BOS added to every encoding (as Llama's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_standin(
    gsm8k_dir: Path,
    out: Path,
    *,
    vocab_size: int = 2048,
    steps: int = 120,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train the tokenizer and a 2-layer Llama for `steps` LM steps; write an HF folder at
    `out` (config.json, model.safetensors, tokenizer files). Returns what was built."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    texts = gsm8k_texts(gsm8k_dir)
    tokenizer = build_tokenizer(texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: supported by vLLM's CPU attention
        num_key_value_heads=1,  # grouped-query attention, as in Llama 3
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps)
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))  # as a base model ships it: no pad token
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.pad_token = EOS  # for batching here only
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        batch = [t + EOS for t in rng.sample(texts, 8)]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=192)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if verbose and (step % 20 == 0 or step == steps - 1):
            print(f"stand-in step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    info = {
        "built_by": "training.standin",
        "gsm8k_dir": str(gsm8k_dir),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "final_loss": round(float(loss.item()), 4),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "standin.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.standin", description=__doc__)
    parser.add_argument("--gsm8k-dir", type=Path, required=True, help="folder with train.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=120, help="LM steps on GSM8K's text")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = build_standin(
        args.gsm8k_dir, args.out, vocab_size=args.vocab_size, steps=args.steps, seed=args.seed
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
