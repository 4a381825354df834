"""The transformers backend: batched KV-cache generation and one-pass step scoring, micro-batched.

Reward models are 2-label token-classification heads read at every step tag (engines/reward.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

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
from engines.batching import ContinuousBatcher, MicroBatcher
from engines.options import EngineOptions
from engines.reward import check_reward_config, reward_token_ids, step_probs, step_tag_id
from engines.tokens import likelihood_token_ids, load_tokenizer

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16", "auto")


class HFOptions(EngineOptions):
    """The transformers backend's options (GLORE_<ROLE>__OPTIONS)."""

    device: str = Field(
        default="auto", description="`auto` (CUDA when present, else the CPU), `cpu`, `cuda:N`."
    )
    dtype: str = Field(
        default="float32", description=f"Weights' dtype: {', '.join(_DTYPES[:-1])} or auto."
    )
    max_batch_size: int = Field(
        default=64, description="Most sequences decoded (or rows read) in one batch."
    )
    batch_wait_ms: float = Field(
        default=5.0,
        description="How long scoring and log-probability reads wait under load for more rows "
        "to batch (generation joins the running batch at every step instead).",
    )
    max_model_len: int | None = Field(
        default=None,
        description="A context shorter than the model's own (vLLM's option of that name); "
        "none: the model's position embeddings.",
    )


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


def _context(config: Any, max_model_len: int | None) -> int:
    """The tokens a model takes: its position embeddings, or fewer when `max_model_len` says so
    (vLLM's option of that name: a deployment may give a role a shorter context)."""
    positions = int(getattr(config, "max_position_embeddings", 1 << 30))
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
    return min(positions, max_model_len or positions)


class _HFEngine:
    """Model loading, device/dtype, a micro-batcher and health, shared by generator and scorer."""

    def __init__(
        self, path: str | Path, options: HFOptions, *, name: str | None, kind: str
    ) -> None:
        import torch

        self.path = str(path)
        self.name = name or f"hf:{kind}:{Path(self.path).name}"
        try:
            self.device = resolve_device(options.device)
            self.dtype = _torch_dtype(options.dtype)
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
        self.max_positions = _context(self.model.config, options.max_model_len)
        self._batcher = self._make_batcher(options.max_batch_size, options.batch_wait_ms)

    def _make_batcher(
        self, max_batch_size: int, batch_wait_ms: float
    ) -> MicroBatcher[Any, Any] | ContinuousBatcher[Any, Any]:
        return MicroBatcher(
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
    def batcher(self) -> MicroBatcher[Any, Any] | ContinuousBatcher[Any, Any]:
        return self._batcher


def _check_adapters(
    path: str | Path, adapters: dict[str, str] | None, adapter: str | None
) -> dict[str, str]:
    """The adapters to load (name -> folder), refusing a missing folder or an unknown choice."""
    adapters = dict(adapters or {})
    if adapter is not None and adapter not in adapters:
        raise EngineLoadError(
            f"adapter {adapter!r} is not in lora_adapters {sorted(adapters)}", path=str(path)
        )
    for name, folder in adapters.items():
        if not Path(folder).is_dir():
            raise EngineLoadError(f"no LoRA adapter {name!r} at {folder}", path=str(path))
    return adapters


# peft's name for "no adapter" in a mixed-adapter batch.
_BASE = "__base__"


@dataclass
class _Row:
    """One sequence to sample: a prompt and the sample index within its n."""

    prompt: str
    params: SamplingParams
    sample: int
    ids: list[int]  # the prompt's tokens, checked before the row joins a shared batch
    adapter: str | None = None  # the LoRA adapter this row is decoded with (None: the base)


@dataclass
class _Live:
    """A row in the running batch: what it has generated and why it stopped."""

    row: _Row
    budget: int
    generator: Any
    out_ids: list[int] = field(default_factory=list)
    cut_text: str | None = None
    finish: FinishReason | None = None


class _RunningBatch:
    """The continuously batched decode of an HFGenerator (a batching.Decoder).

    The rows share one left-padded KV cache. Rows that join are prefilled together, then their
    cache is left-padded to the running one's width (or the reverse) and stacked under it; rows
    that finish are selected out, and cache columns no row attends to any more are cut off.
    Padding is masked and positions count real tokens only, so each row reads as if alone: greedy
    text is that of static batching.
    """

    def __init__(self, gen: HFGenerator) -> None:
        self._gen = gen
        self.reset()

    def reset(self) -> None:
        self._keys: list[int] = []
        self._rows: list[_Live] = []
        self._cache: Any = None
        self._mask: Any = None  # [rows, width]
        self._positions: Any = None  # [rows, 1], each row's last position
        self._next: list[int] = []  # the token each row feeds at the next step

    @property
    def size(self) -> int:
        return len(self._keys)

    def admit(self, rows: dict[int, _Row]) -> dict[int, Completion]:
        gen = self._gen
        new = [
            _Live(
                r, min(r.params.max_new_tokens, gen.max_positions - len(r.ids)), gen._generator(r)
            )
            for r in rows.values()
        ]
        with gen._torch.inference_mode():
            cache, mask, positions, logits = gen._prefill([r.row for r in new])
            tokens = gen._choose(
                logits.float(), [r.row for r in new], [r.generator for r in new]
            ).tolist()
            first = len(self._keys)
            self._join(list(rows), new, cache, mask, positions, tokens)
        return self._settle(first)

    def step(self) -> dict[int, Completion]:
        gen, torch = self._gen, self._gen._torch
        n = len(self._rows)
        with torch.inference_mode(), gen._forward():
            self._mask = torch.cat([self._mask, self._mask.new_ones((n, 1))], dim=1)
            self._positions = self._positions + 1
            logits = gen.model(
                input_ids=torch.tensor(self._next, device=gen.device).view(n, 1),
                attention_mask=self._mask,
                position_ids=self._positions,
                past_key_values=self._cache,
                use_cache=True,
                **gen._adapter_kwargs([r.row.adapter for r in self._rows]),
            ).logits[:, -1, :]
            self._next = gen._choose(
                logits.float(), [r.row for r in self._rows], [r.generator for r in self._rows]
            ).tolist()
        return self._settle()

    def drop(self, keys: Sequence[int]) -> None:
        gone = set(keys)
        self._select([i for i, k in enumerate(self._keys) if k not in gone])

    def _settle(self, first: int = 0) -> dict[int, Completion]:
        """Rows from `first` on take their new token; finished rows leave the batch with their
        completion (rows before `first` took theirs at the step before)."""
        done: dict[int, Completion] = {}
        keep = list(range(first))
        for i in range(first, len(self._keys)):
            row = self._rows[i]
            if self._gen._take_token(row, self._next[i]):
                done[self._keys[i]] = self._gen._finish(row)
            else:
                keep.append(i)
        if done:
            self._select(keep)
        return done

    def _select(self, keep: list[int]) -> None:
        if len(keep) == len(self._keys):
            return
        if not keep:
            self.reset()
            return
        torch = self._gen._torch
        index = torch.tensor(keep, device=self._gen.device)
        self._cache.batch_select_indices(index)
        self._mask, self._positions = self._mask[index], self._positions[index]
        self._keys = [self._keys[i] for i in keep]
        self._rows = [self._rows[i] for i in keep]
        self._next = [self._next[i] for i in keep]
        # Columns that only padding fills now, for every row, are dead weight at every step.
        unused = int((self._mask.sum(0) == 0).long().cumprod(0).sum())
        if unused:
            self._mask = self._mask[:, unused:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[..., unused:, :]
                layer.values = layer.values[..., unused:, :]

    def _join(
        self,
        keys: list[int],
        rows: list[_Live],
        cache: Any,
        mask: Any,
        positions: Any,
        tokens: list[int],
    ) -> None:
        if not self._keys:
            self._keys, self._rows, self._next = keys, rows, tokens
            self._cache, self._mask, self._positions = cache, mask, positions
            return
        torch = self._gen._torch
        width = max(self._mask.shape[1], mask.shape[1])

        def widen(t: Any, dim: int) -> Any:
            # Left-pad along `dim` (the sequence axis) with zeros: masked, never read.
            short = width - t.shape[dim]
            if not short:
                return t
            shape = list(t.shape)
            shape[dim] = short
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, joined in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([widen(old.keys, -2), widen(joined.keys, -2)], dim=0)
            old.values = torch.cat([widen(old.values, -2), widen(joined.values, -2)], dim=0)
        self._mask = torch.cat([widen(self._mask, 1), widen(mask, 1)], dim=0)
        self._positions = torch.cat([self._positions, positions], dim=0)
        self._keys += keys
        self._rows += rows
        self._next += tokens


class HFGenerator(_HFEngine):
    """A causal LM served by transformers, decoded with the KV cache and batched continuously."""

    def __init__(
        self, path: str | Path, options: HFOptions | None = None, *, name: str | None = None
    ) -> None:
        options = options or HFOptions()
        # Read by _load_model: every adapter is loaded, unmerged, over the one base model.
        self._adapters = _check_adapters(path, options.lora_adapters, options.adapter)
        # Shared by the views (with_adapter) and held around every forward pass when adapters
        # are loaded: peft hands each row's adapter to the LoRA layers through hooks registered
        # on the shared model for the length of a call, not through the call itself, so the
        # decoding thread and the log-probability reader must not run the model at once (a
        # batch of 3 would read the hooks of a batch of 1 and fail).
        self._forward_lock = threading.Lock()
        super().__init__(path, options, name=name, kind="generator")
        self.adapter = options.adapter
        self.tokenizer.padding_side = "left"
        self.eos_ids = self._eos_ids()
        # Reading log-probabilities is one forward pass per row: its own batcher, so a scoring
        # call never waits behind a long generation batch (and vice versa).
        self._reader: MicroBatcher[tuple[list[int], int, str | None], TokenLogprobs] = MicroBatcher(
            self._read_batch,
            max_batch_size=options.max_batch_size,
            wait_ms=options.batch_wait_ms,
            name=f"{self.name}:logprobs",
        )

    def _make_batcher(
        self, max_batch_size: int, batch_wait_ms: float
    ) -> ContinuousBatcher[Any, Any]:
        # Generation is batched continuously: rows join and leave at every decoding step, so no
        # wait window is needed (batch_wait_ms applies to the log-probability reader only).
        return ContinuousBatcher(_RunningBatch(self), max_batch_size=max_batch_size, name=self.name)

    def health(self) -> EngineHealth:
        gen, reader = self._batcher.health(), self._reader.health()
        return gen if not gen.healthy else reader

    async def close(self) -> None:
        await self._reader.close()
        await super().close()

    def _load_model(self) -> Any:
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=self.dtype)
        if self._adapters:
            from peft import PeftModel

            # Unmerged: each row names its adapter (peft's mixed-adapter batches), so roles
            # fine-tuned as adapters of one base share its weights, batches and KV cache.
            (first, folder), *rest = sorted(self._adapters.items())
            model = PeftModel.from_pretrained(model, folder, adapter_name=first)
            for name, folder in rest:
                model.load_adapter(folder, adapter_name=name)
        return model

    def with_adapter(self, adapter: str | None) -> HFGenerator:
        """A view of this engine that decodes with another loaded LoRA adapter (None: the base).

        Views share the model, its batcher and so its running batch; closing one closes all.
        """
        if adapter is not None and adapter not in self._adapters:
            raise ValueError(
                f"adapter: unknown LoRA adapter {adapter!r}; loaded: {sorted(self._adapters)}"
            )
        view = copy.copy(self)
        view.adapter = adapter
        if adapter is not None:
            view.name = f"{self.name}+{adapter}"
        return view

    def _forward(self) -> contextlib.AbstractContextManager[Any]:
        """The context of one forward pass: alone on the model when adapters are loaded."""
        return self._forward_lock if self._adapters else contextlib.nullcontext()

    def _adapter_kwargs(self, adapters: Sequence[str | None]) -> dict[str, Any]:
        """Forward-pass arguments naming each row's adapter, when adapters are loaded."""
        if not self._adapters:
            return {}
        return {"adapter_names": [a or _BASE for a in adapters]}

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
            _Row(p, params, j, ids, self.adapter)
            for p, ids in zip(prompts, encoded, strict=True)
            for j in range(params.n)
        ]
        flat = await self._batcher.submit(rows)
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        """Each completion's token log-probabilities given its prompt (one forward pass each)."""
        items = [(*likelihood_token_ids(self.tokenizer, r), self.adapter) for r in requests]
        for ids, _, _ in items:
            if len(ids) > self.max_positions:
                raise ContextLengthError(
                    f"completion: prompt and completion have {len(ids)} tokens, the model takes "
                    f"{self.max_positions}"
                )
        return await self._reader.submit(items) if items else []

    # ------------------------------------------------------------ worker thread

    def _read_batch(
        self, items: list[tuple[list[int], int, str | None]], cancelled: Callable[[], list[bool]]
    ) -> list[TokenLogprobs]:
        torch = self._torch
        # Right padding: a causal model's readings at real tokens ignore what follows them.
        width = max(len(ids) for ids, _, _ in items)
        input_ids = torch.full((len(items), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, (ids, _, _) in enumerate(items):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        with torch.inference_mode(), self._forward():
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                **self._adapter_kwargs([a for _, _, a in items]),
            ).logits.float()  # [batch, width, vocab]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            picked = logp.gather(-1, input_ids[:, 1:, None].to(self.device))[..., 0].cpu()
        # Token t (t >= n_prompt) is read at position t - 1.
        return [
            TokenLogprobs(tuple(float(x) for x in picked[i, n - 1 : len(ids) - 1]))
            for i, (ids, n, _) in enumerate(items)
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

    # ------------------------------------------------------------ continuous batching

    def _prefill(self, rows: list[_Row]) -> tuple[Any, Any, Any, Any]:
        """One left-padded forward pass over new rows: (cache, mask, last positions, logits)."""
        torch = self._torch
        from transformers import DynamicCache

        width = max(len(r.ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r.ids) :] = torch.tensor(r.ids)
            mask[i, width - len(r.ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        # Left padding: positions count real tokens only, so a row reads as if it were alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        with self._forward():
            logits = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **self._adapter_kwargs([r.adapter for r in rows]),
            ).logits[:, -1, :]
        return cache, mask, positions[:, -1:], logits

    def _finish(self, row: _Live) -> Completion:
        text = row.cut_text
        if text is None:
            body = [t for t in row.out_ids if t not in self.eos_ids]
            text = self.tokenizer.decode(body, skip_special_tokens=True)
        # The token count includes a closing EOS, as vLLM counts it.
        return Completion(text, len(row.out_ids), row.finish or "length")

    def _take_token(self, row: _Live, token: int) -> bool:
        """Append a chosen token to a row; True when the row is finished."""
        row.out_ids.append(token)
        if token in self.eos_ids:
            row.finish = "stop"
            return True
        if row.row.params.stop:
            text = self.tokenizer.decode(row.out_ids, skip_special_tokens=True)
            cut = _first_stop(text, row.row.params.stop)
            if cut is not None:
                row.cut_text, row.finish = text[:cut], "stop"
                return True
        if len(row.out_ids) >= row.budget:
            row.finish = "length"
            return True
        return False

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
        self, path: str | Path, options: HFOptions | None = None, *, name: str | None = None
    ) -> None:
        # LoRA options are a generator's; the registry refuses them for a scorer.
        super().__init__(path, options or HFOptions(), name=name, kind="scorer")
        self.tag_id = step_tag_id(self.tokenizer, self.path)

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
