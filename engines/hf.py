"""The transformers backend: batched KV-cache generation and one-pass step scoring, micro-batched.

Reward models are `*ForTokenClassification` heads with 2 labels (1 = "correct"). A step's score is
softmax(logits)[1] at the STEP_TAG token that closes it (engines.text.reward_input), so one forward
pass scores every step of a solution and the outcome is the reading at the last tag. We chose this
over a causal LM read through label-token logprobs because transformers trains it with a plain
token-classification loss and vLLM serves the same checkpoint unchanged through its pooling runner
(`token_classify`), which works on CPU, where vLLM refuses `prompt_logprob_token_ids`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.base import (
    Completion,
    ContextLengthError,
    EngineHealth,
    EngineLoadError,
    FinishReason,
    InputError,
    LikelihoodRequest,
    SamplingParams,
    ScoreRequest,
    StepScores,
    TokenLogprobs,
)
from engines.batching import MicroBatcher
from engines.text import STEP_TAG, reward_input

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_device(device: str) -> str:
    """ "auto" picks CUDA when a GPU is present, else the CPU; anything else passes through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for, but CUDA is not available")
    return device


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        # Causal LMs often ship without a pad token; any id works since padding is masked out.
        tok.pad_token = tok.eos_token
    return tok


def step_tag_id(tokenizer: Any, path: str) -> int:
    """The id of STEP_TAG, which must be one token in a reward model's tokenizer."""
    ids = tokenizer.encode(STEP_TAG, add_special_tokens=False)
    if len(ids) != 1:
        raise EngineLoadError(f"tokenizer does not have {STEP_TAG!r} as one token", path=path)
    return int(ids[0])


def check_reward_config(path: str) -> None:
    """Refuse a checkpoint that is not a 2-label token-classification reward model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForTokenClassification") for a in archs):
        raise EngineLoadError(
            f"a reward model needs a token-classification head, the checkpoint is {archs}",
            path=path,
        )
    if getattr(config, "num_labels", None) != 2:
        raise EngineLoadError(
            "a reward model needs 2 labels (1 = correct), "
            f"config has num_labels={getattr(config, 'num_labels', None)}",
            path=path,
        )


def reward_token_ids(tokenizer: Any, tag_id: int, request: ScoreRequest) -> list[int]:
    """Token ids of a request's reward input; both backends score exactly these ids."""
    if not request.steps:
        raise InputError("steps: a solution to score needs at least one step")
    ids = tokenizer.encode(reward_input(request.question, request.steps), add_special_tokens=False)
    found = sum(1 for i in ids if i == tag_id)
    if found != len(request.steps):
        # A step containing the literal tag would shift every reading after it.
        raise InputError(
            f"steps: expected {len(request.steps)} step tags, found {found} "
            f"(a step may not contain {STEP_TAG!r})"
        )
    return list(ids)


def likelihood_token_ids(tokenizer: Any, request: LikelihoodRequest) -> tuple[list[int], int]:
    """(prompt ids + completion ids + EOS, number of prompt ids): the tokens a policy was trained
    on (training.data renders SFT examples the same way), so both backends read exactly these."""
    prompt = tokenizer.encode(request.prompt, add_special_tokens=False)
    completion = tokenizer.encode(request.completion, add_special_tokens=False)
    if not prompt:
        raise InputError("prompt: a prompt is empty")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [*prompt, *completion, *eos], len(prompt)


def _context(config: Any, max_model_len: int | None) -> int:
    """The tokens a model takes: its position embeddings, or fewer when `max_model_len` says so
    (vLLM's option of that name: a deployment may give a role a shorter context)."""
    positions = int(getattr(config, "max_position_embeddings", 1 << 30))
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
    return min(positions, max_model_len or positions)


def step_probs(logits: Any, ids: Sequence[int], tag_id: int) -> StepScores:
    """softmax(logits)[1] at every step-tag position; logits is [len(ids), 2]."""
    import torch

    positions = [i for i, t in enumerate(ids) if t == tag_id]
    probs = torch.softmax(logits[positions].float(), dim=-1)[:, 1]
    return StepScores(tuple(float(p) for p in probs))


class _HFEngine:
    """Model loading, device/dtype, a micro-batcher and health, shared by generator and scorer."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str,
        dtype: str,
        max_batch_size: int,
        batch_wait_ms: float,
        name: str | None,
        kind: str,
    ) -> None:
        import torch

        self.path = str(path)
        self.name = name or f"hf:{kind}:{Path(self.path).name}"
        try:
            self.device = resolve_device(device)
            self.dtype = _torch_dtype(dtype)
            if not Path(self.path).is_dir():
                raise FileNotFoundError(f"no checkpoint directory at {self.path}")
            self.tokenizer = load_tokenizer(self.path)
            self.model = self._load_model()
            self.model.to(self.device).eval()
        except EngineLoadError:
            raise
        except Exception as exc:
            raise EngineLoadError(f"cannot load {kind} checkpoint: {exc}", path=self.path) from exc
        self._torch = torch
        self._batcher: MicroBatcher[Any, Any] = MicroBatcher(
            self._run_batch, max_batch_size=max_batch_size, wait_ms=batch_wait_ms, name=self.name
        )

    def _load_model(self) -> Any:
        raise NotImplementedError

    def _run_batch(self, items: list[Any], cancelled: Callable[[], list[bool]]) -> list[Any]:
        raise NotImplementedError

    def health(self) -> EngineHealth:
        return self._batcher.health()

    async def close(self) -> None:
        await self._batcher.close()
        # Drop the weights so a closed engine frees its memory.
        self.model = None

    @property
    def batcher(self) -> MicroBatcher[Any, Any]:
        return self._batcher


def _adapter_path(
    path: str | Path, adapters: dict[str, str] | None, adapter: str | None
) -> str | None:
    if adapter is None:
        return None
    if not adapters or adapter not in adapters:
        raise EngineLoadError(
            f"adapter {adapter!r} is not in lora_adapters {sorted(adapters or {})}", path=str(path)
        )
    if not Path(adapters[adapter]).is_dir():
        raise EngineLoadError(f"no LoRA adapter {adapter!r} at {adapters[adapter]}", path=str(path))
    return adapters[adapter]


@dataclass
class _Row:
    """One sequence to sample: a prompt and the sample index within its n."""

    prompt: str
    params: SamplingParams
    sample: int
    ids: list[int]  # the prompt's tokens, checked before the row joins a shared batch


class HFGenerator(_HFEngine):
    """A causal LM served by transformers: left-padded batches decoded with the KV cache."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        max_batch_size: int = 64,
        batch_wait_ms: float = 5.0,
        name: str | None = None,
        lora_adapters: dict[str, str] | None = None,
        adapter: str | None = None,
        max_model_len: int | None = None,
    ) -> None:
        # Read by _load_model: the chosen LoRA adapter is merged into the weights once.
        self._adapter_path = _adapter_path(path, lora_adapters, adapter)
        super().__init__(
            path,
            device=device,
            dtype=dtype,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            name=name,
            kind="generator",
        )
        self.adapter = adapter
        self.tokenizer.padding_side = "left"
        self.eos_ids = self._eos_ids()
        self.max_positions = _context(self.model.config, max_model_len)
        # Reading log-probabilities is one forward pass per row: its own batcher, so a scoring
        # call never waits behind a long generation batch (and vice versa).
        self._reader: MicroBatcher[tuple[list[int], int], TokenLogprobs] = MicroBatcher(
            self._read_batch,
            max_batch_size=max_batch_size,
            wait_ms=batch_wait_ms,
            name=f"{self.name}:logprobs",
        )

    def health(self) -> EngineHealth:
        gen, reader = self._batcher.health(), self._reader.health()
        return gen if not gen.healthy else reader

    async def close(self) -> None:
        await self._reader.close()
        await super().close()

    def _load_model(self) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=self.dtype)
        if self._adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self._adapter_path).merge_and_unload()
        return model

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        cfg_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(cfg_eos, int):
            ids.add(cfg_eos)
        elif isinstance(cfg_eos, list):
            ids.update(cfg_eos)
        return {i for i in ids if i is not None}

    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        """n completions per prompt, in prompt order. Cancelling the awaiting task stops work."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a sequence of strings, got one string")
        # Encode and check here, not in the worker: a bad prompt must fail its own call only,
        # never the other callers' rows micro-batched with it.
        encoded = [self._encode(p) for p in prompts]
        rows = [
            _Row(p, params, j, ids)
            for p, ids in zip(prompts, encoded, strict=True)
            for j in range(params.n)
        ]
        flat = await self._batcher.submit(rows)
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        """Each completion's token log-probabilities given its prompt (one forward pass each)."""
        items = [likelihood_token_ids(self.tokenizer, r) for r in requests]
        for ids, _ in items:
            if len(ids) > self.max_positions:
                raise ContextLengthError(
                    f"completion: prompt and completion have {len(ids)} tokens, the model takes "
                    f"{self.max_positions}"
                )
        return await self._reader.submit(items) if items else []

    # ------------------------------------------------------------ worker thread

    def _read_batch(
        self, items: list[tuple[list[int], int]], cancelled: Callable[[], list[bool]]
    ) -> list[TokenLogprobs]:
        torch = self._torch
        # Right padding: a causal model's readings at real tokens ignore what follows them.
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, (ids, _) in enumerate(items):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits.float()  # [batch, width, vocab]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            picked = logp.gather(-1, input_ids[:, 1:, None].to(self.device))[..., 0].cpu()
        # Token t (t >= n_prompt) is read at position t - 1.
        return [
            TokenLogprobs(tuple(float(x) for x in picked[i, n - 1 : len(ids) - 1]))
            for i, (ids, n) in enumerate(items)
        ]

    def _encode(self, prompt: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(prompt, add_special_tokens=False)
        if not ids:
            raise InputError("prompts: a prompt is empty")
        if len(ids) >= self.max_positions:
            raise ContextLengthError(
                f"prompts: a prompt has {len(ids)} tokens, the model takes {self.max_positions}"
            )
        return ids

    def _run_batch(self, rows: list[_Row], cancelled: Callable[[], list[bool]]) -> list[Completion]:
        with self._torch.inference_mode():
            return self._decode(rows, [r.ids for r in rows], cancelled)

    def _decode(
        self, rows: list[_Row], encoded: list[list[int]], cancelled: Callable[[], list[bool]]
    ) -> list[Completion]:
        torch = self._torch
        from transformers import DynamicCache

        b = len(rows)
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        # Left padding: positions count real tokens only, so a row reads as if it were alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        budget = [
            min(r.params.max_new_tokens, self.max_positions - len(ids))
            for r, ids in zip(rows, encoded, strict=True)
        ]
        generators = [self._generator(r) for r in rows]
        out_ids: list[list[int]] = [[] for _ in rows]
        cut_texts: list[str | None] = [None] * b
        finish: list[str | None] = [None] * b

        cache = DynamicCache()
        logits = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        active = list(range(b))  # original row index of each row still in the batch
        while True:
            next_ids = self._choose(
                logits.float(), [rows[i] for i in active], [generators[i] for i in active]
            ).tolist()
            for i, t in zip(active, next_ids, strict=True):
                out_ids[i].append(t)
                if t in self.eos_ids:
                    finish[i] = "stop"
                    continue
                if rows[i].params.stop:
                    text = self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
                    cut = _first_stop(text, rows[i].params.stop)
                    if cut is not None:
                        cut_texts[i], finish[i] = text[:cut], "stop"
                        continue
                if len(out_ids[i]) >= budget[i]:
                    finish[i] = "length"
            # Rows whose caller went away count as done, so an abandoned batch ends early.
            gone = cancelled()
            keep = [k for k, i in enumerate(active) if finish[i] is None and not gone[i]]
            if not keep:
                break
            if len(keep) < len(active):
                # Drop finished rows from the batch and its KV cache: the long tail runs lean.
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                active = [active[k] for k in keep]
                next_ids = [next_ids[k] for k in keep]
            n = len(active)
            mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits = self.model(
                input_ids=torch.tensor(next_ids, device=self.device).view(n, 1),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1, :]

        results = []
        for i in range(b):
            text = cut_texts[i]
            if text is None:
                body = [t for t in out_ids[i] if t not in self.eos_ids]
                text = self.tokenizer.decode(body, skip_special_tokens=True)
            reason: FinishReason = "stop" if finish[i] == "stop" else "length"
            # The token count includes a closing EOS, as vLLM counts it.
            results.append(Completion(text, len(out_ids[i]), reason))
        return results

    def _generator(self, row: _Row) -> Any:
        if row.params.seed is None or row.params.greedy:
            return None
        # One stream per (seed, sample index): a row's samples do not depend on its batch-mates.
        # Folded into 64 bits: torch refuses a larger seed ("Overflow when unpacking long long").
        g = self._torch.Generator(device=self.device)
        g.manual_seed((row.params.seed * 1_000_003 + row.sample) % 2**64)
        return g

    def _choose(self, logits: Any, rows: list[_Row], generators: list[Any]) -> Any:
        """Next token per row: argmax when greedy (temperature below SAMPLING_EPS), else top-p
        sampling."""
        torch = self._torch
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            p = row.params
            if p.greedy:
                continue
            probs = torch.softmax(logits[i] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # Keep the smallest prefix whose mass reaches top_p (always at least one token).
                drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
                sorted_probs[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            chosen[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
        return chosen


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


class HFScorer(_HFEngine):
    """A token-classification reward model: every step of a solution read in one forward pass."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        max_batch_size: int = 64,
        batch_wait_ms: float = 5.0,
        name: str | None = None,
        max_model_len: int | None = None,
    ) -> None:
        super().__init__(
            path,
            device=device,
            dtype=dtype,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            name=name,
            kind="scorer",
        )
        self.tag_id = step_tag_id(self.tokenizer, self.path)
        self.max_positions = _context(self.model.config, max_model_len)

    def _load_model(self) -> Any:
        from transformers import AutoModelForTokenClassification

        check_reward_config(self.path)
        return AutoModelForTokenClassification.from_pretrained(self.path, dtype=self.dtype)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        """One StepScores per request, in order; requests are batched together."""
        items = []
        for r in requests:
            ids = reward_token_ids(self.tokenizer, self.tag_id, r)
            if len(ids) > self.max_positions:
                raise ContextLengthError(
                    f"steps: the solution has {len(ids)} tokens, the model takes "
                    f"{self.max_positions}"
                )
            items.append(ids)
        return await self._batcher.submit(items)

    def _run_batch(
        self, items: list[list[int]], cancelled: Callable[[], list[bool]]
    ) -> list[StepScores]:
        torch = self._torch
        # Right padding: a causal model's readings at real tokens ignore what follows them.
        width = max(len(ids) for ids in items)
        input_ids = torch.full((len(items), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(items):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits.cpu()  # [batch, width, 2]
        return [step_probs(logits[i, : len(ids)], ids, self.tag_id) for i, ids in enumerate(items)]
