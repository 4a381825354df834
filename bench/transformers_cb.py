"""Times transformers' own continuous batching (`generate_batch`, paged KV cache) against the HF
generator's on the same prompts, and checks their greedy text agrees; prints one line per way.

    python -m bench.transformers_cb [--prompts 32] [--max-new-tokens 48]

Why the HF backend batches continuously with its own code: see docs/engines.md and
reports/transformers-cb.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transformers_cb")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from engines.base import SamplingParams
    from engines.hf import HFGenerator, HFOptions
    from engines.text import policy_prompt
    from training.tiny_models import build_tiny_checkpoints, tiny_problems

    torch.set_num_threads(1)
    path = str(build_tiny_checkpoints(verbose=False).policy)
    prompts = [policy_prompt(p.question) for p in tiny_problems(args.prompts, seed=77)]
    gen = HFGenerator(path, HFOptions(device="cpu"))
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    asyncio.run(gen.generate(prompts, params))  # warm-up
    start = time.perf_counter()
    ours = asyncio.run(gen.generate(prompts, params))
    seconds = time.perf_counter() - start
    tokens = sum(c[0].num_tokens for c in ours)
    print(f"glore HF generator: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tok/s")
    asyncio.run(gen.close())

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    for attn in (None, "paged|eager"):
        if attn:
            model.set_attn_implementation(attn)
        config = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
            num_blocks=64,
            block_size=32,
            max_batch_tokens=512,
            use_cuda_graph=False,
        )
        start = time.perf_counter()
        out = model.generate_batch(inputs=ids, generation_config=config, progress_bar=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(r.generated_tokens) for r in out.values())
        texts = [
            tok.decode(
                [t for t in out[f"req_{i}"].generated_tokens if t != tok.eos_token_id],
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        same = sum(t == c[0].text for t, c in zip(texts, ours, strict=True))
        print(
            f"transformers generate_batch ({attn or 'default'}): {tokens} tokens in "
            f"{seconds:.2f} s = {tokens / seconds:.0f} tok/s; greedy text equal on "
            f"{same}/{len(prompts)}"
        )


if __name__ == "__main__":
    main()
