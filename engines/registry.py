"""Load the engines for a set of roles; roles that point at the same model share one engine.

`load_engines` is blocking (minutes for vLLM); from async code await `load_engines_async`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

from engines.backends import backend_row, engine_options
from engines.base import (
    Backend,
    ByRole,
    Engine,
    EngineHealth,
    EngineLoadError,
    EngineSpec,
    Generator,
    Role,
    Scorer,
)

log = logging.getLogger(__name__)


def load_engine(role: Role, spec: EngineSpec) -> Generator | Scorer:
    """Load one role's model: a Scorer for ORM/SORM, a Generator otherwise.

    The backend's row in engines.backends.BACKENDS says which class serves the role and
    validates the options. Raises EngineLoadError naming the role and the path when anything
    goes wrong.
    """
    role = Role(role)
    spec = adapter_spec(role, spec)
    options = engine_options(role, spec)
    cls = backend_row(spec.backend).engine_class(role)
    try:
        engine = cls(spec.path, options, name=f"{role.value}:{spec.backend}")
    except EngineLoadError as exc:
        raise EngineLoadError(
            f"cannot load the {role.value} model: {_reason(exc)}", role=str(role), path=spec.path
        ) from exc
    except Exception as exc:
        raise EngineLoadError(
            f"cannot load the {role.value} model: {exc}", role=str(role), path=spec.path
        ) from exc
    return engine


def _reason(exc: EngineLoadError) -> str:
    # The inner error already names the path; keep just its message.
    text = str(exc)
    return text.rsplit(" (", 1)[0] if exc.path else text


def _share_key(role: Role, spec: EngineSpec) -> tuple[Any, ...]:
    options = tuple(sorted((k, repr(v)) for k, v in spec.options.items()))
    return (
        os.path.realpath(spec.path),
        str(spec.backend),
        role.is_scorer,
        options,
    )


class EngineSet(ByRole):
    """The loaded engines by role. Roles may share one engine object."""

    def __init__(
        self,
        engines: Mapping[Role, Engine],
        loaded: Iterable[Engine] = (),
        load_seconds: Mapping[str, float] | None = None,
        *,
        load_wall_seconds: float | None = None,
    ) -> None:
        self._by_role: dict[Role, Engine] = {Role(r): e for r, e in engines.items()}
        # The engines actually loaded, when roles hold views of them (one per LoRA adapter).
        self._loaded = list(loaded)
        # Seconds each engine took to load, by the roles it serves ("policy+refine_global").
        # Each engine's own load, overlapping others' when they load together: their sum can
        # exceed `load_wall_seconds`, the time from the first load's start to the last's end.
        self.load_seconds: dict[str, float] = dict(load_seconds or {})
        self.load_wall_seconds = load_wall_seconds

    @property
    def roles(self) -> set[Role]:
        return set(self._by_role)

    def generator(self, role: Role) -> Generator:
        engine = self._get(role)
        if Role(role).is_scorer or not isinstance(engine, Generator):
            raise TypeError(f"role {Role(role).value} is not served by a generator")
        return engine

    def scorer(self, role: Role) -> Scorer:
        engine = self._get(role)
        if not Role(role).is_scorer or not isinstance(engine, Scorer):
            raise TypeError(f"role {Role(role).value} is not served by a scorer")
        return engine

    def _get(self, role: Role) -> Engine:
        try:
            return self._by_role[Role(role)]
        except KeyError:
            raise KeyError(
                f"no engine loaded for role {Role(role).value}; loaded: "
                f"{sorted(r.value for r in self._by_role)}"
            ) from None

    def unique_engines(self) -> list[Engine]:
        """Each loaded engine once, however many roles (or adapter views) it serves."""
        if self._loaded:
            return list(self._loaded)
        seen: dict[int, Engine] = {}
        for e in self._by_role.values():
            seen.setdefault(id(e), e)
        return list(seen.values())

    def health(self) -> dict[Role, EngineHealth]:
        out = {}
        for role, engine in self._by_role.items():
            try:
                out[role] = engine.health()
            except Exception as exc:  # a health check must report, never raise
                out[role] = EngineHealth(False, f"health check failed: {exc!r}")
        return out

    async def close(self) -> None:
        """Close every engine once, even when roles share it."""
        results = await asyncio.gather(
            *(e.close() for e in self.unique_engines()), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                log.warning("closing an engine failed: %r", r)


_Plan = tuple[
    dict[Role, EngineSpec],
    dict[tuple[Any, ...], tuple[Role, EngineSpec, dict[str, Any]]],
    dict[Role, tuple[Any, ...]],
]


def _plan(specs: Mapping[Role, EngineSpec]) -> _Plan:
    """The specs as served (adapter folders resolved), the engines to load (share key -> first
    role, base spec, union of adapters) and each role's share key. Reads configs, loads nothing."""
    groups: dict[tuple[Any, ...], tuple[Role, EngineSpec, dict[str, Any]]] = {}
    role_keys: dict[Role, tuple[Any, ...]] = {}
    served = {Role(r): adapter_spec(Role(r), s) for r, s in specs.items()}
    for role, spec in served.items():
        key = _share_key(role, _base_spec(role, spec))
        role_keys[role] = key
        if key not in groups:
            groups[key] = (role, _base_spec(role, spec), {})
        groups[key][2].update(_adapters(role, spec))
    return served, groups, role_keys


def engine_groups(specs: Mapping[Role, EngineSpec]) -> list[tuple[Role, ...]]:
    """The engines `load_engines(specs)` loads, without loading them: for each, the roles it
    serves, in load order (e.g. a run with refiners as adapters: policy and both refiners on
    one engine)."""
    _, groups, role_keys = _plan(specs)
    return [_roles_of(role_keys, key) for key in groups]


def _roles_of(role_keys: Mapping[Role, tuple[Any, ...]], key: tuple[Any, ...]) -> tuple[Role, ...]:
    """The roles one engine (its share key) serves, in load order."""
    return tuple(r for r, k in role_keys.items() if k == key)


def load_engines(specs: Mapping[Role, EngineSpec], *, concurrency: int = len(Role)) -> EngineSet:
    """Load every role; roles with the same (path, backend, options) share one engine.

    Generators that differ only in their LoRA adapter also share one engine (the union of their
    `lora_adapters`), each role a view applying its own `adapter`; a role folder holding an
    adapter (see adapter_spec) is served that way over its base.

    Up to `concurrency` engines load at once where their backend allows it (its row's
    `parallel_load`: vLLM, remote); the others load one after another first (1: all of them
    one after another). On a failure, every engine loaded (or still loading, once it finishes)
    is closed and EngineLoadError names the role: the first to fail in load order.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    specs, groups, role_keys = _plan(specs)
    jobs = {
        key: _group_spec(first, base, adapters) for key, (first, base, adapters) in groups.items()
    }
    start = time.perf_counter()
    loaded, seconds = _load_groups(jobs, concurrency)
    wall = time.perf_counter() - start
    by_role: dict[Role, Engine] = {}
    try:
        for role, spec in specs.items():
            role = Role(role)
            engine = loaded[role_keys[role]]
            adapter = spec.options.get("adapter") if _shares_adapters(role, spec) else None
            if adapter is not None:
                try:
                    engine = engine.with_adapter(str(adapter))  # type: ignore[attr-defined]
                except ValueError as exc:
                    raise EngineLoadError(str(exc), role=str(role), path=spec.path) from exc
            labelled = getattr(engine, "for_role", None)
            if labelled is not None:  # an engine that counts its calls by role (remote)
                engine = labelled(role.value)
            by_role[role] = engine
    except BaseException:
        _close_now(list(loaded.values()))
        raise
    names = {k: "+".join(r.value for r in _roles_of(role_keys, k)) for k in groups}
    # In load order, whichever finished first.
    engines = [loaded[k] for k in groups]
    return EngineSet(
        by_role, engines, {names[k]: seconds[k] for k in groups}, load_wall_seconds=wall
    )


async def load_engines_async(
    specs: Mapping[Role, EngineSpec], *, concurrency: int = len(Role)
) -> EngineSet:
    """`load_engines` in a thread of its own. A load cannot be stopped midway, so a caller
    cancelled while it runs (a server shut down during its start) leaves it to finish, and its
    engines are closed then rather than leaked."""
    result: Future[EngineSet] = Future()
    result.set_running_or_notify_cancel()  # never cancelled: the thread always sets it

    def load() -> None:
        try:
            result.set_result(load_engines(specs, concurrency=concurrency))
        except BaseException as exc:
            result.set_exception(exc)

    threading.Thread(target=load, name="glore-load-engines").start()
    try:
        return await asyncio.wrap_future(result)
    except asyncio.CancelledError:
        result.add_done_callback(_close_unclaimed)
        raise


def _close_unclaimed(result: Future[EngineSet]) -> None:
    if result.exception() is None:
        _close_now(result.result().unique_engines())


def _group_spec(
    first_role: Role, base: EngineSpec, adapters: Mapping[str, Any]
) -> tuple[Role, EngineSpec]:
    """What one engine loads: as its first role, its base spec with every role's adapters."""
    if adapters:
        base = EngineSpec(base.path, base.backend, {**base.options, "lora_adapters": adapters})
    return first_role, base


def parallel_load(spec: EngineSpec) -> bool:
    """Whether `spec`'s backend lets its engines load beside others (an unknown backend: no;
    load_engine then names it)."""
    try:
        return backend_row(spec.backend).parallel_load
    except ValueError:
        return False


_Key = tuple[Any, ...]


def _timed_load(role: Role, spec: EngineSpec) -> tuple[Engine, float]:
    log.info("loading %s from %s (%s)", role.value, spec.path, spec.backend)
    start = time.perf_counter()
    engine = load_engine(role, spec)
    return engine, time.perf_counter() - start


def _load_groups(
    jobs: Mapping[_Key, tuple[Role, EngineSpec]], concurrency: int
) -> tuple[dict[_Key, Engine], dict[_Key, float]]:
    """Each job's engine and its load seconds: the serial ones one after another, then the rest
    on a pool of `concurrency` threads. On any failure (an interrupt included) nothing loaded
    survives: engines that finished are closed, and one still loading closes when it finishes."""
    together = [k for k, (_, spec) in jobs.items() if concurrency > 1 and parallel_load(spec)]
    alone = [k for k in jobs if k not in together]
    loads = _Loads()
    try:
        for key in alone:
            loads.add(key, *_timed_load(*jobs[key]))
        if len(together) > 1:
            for key in together:
                _prepare(*jobs[key])
        if len(together) == 1:
            loads.add(together[0], *_timed_load(*jobs[together[0]]))
        elif together:
            _load_together(loads, {k: jobs[k] for k in together}, concurrency)
    except BaseException:
        _close_now(loads.abandon())
        raise
    return loads.engines, loads.seconds


def _prepare(role: Role, spec: EngineSpec) -> None:
    """The part of `spec`'s load that its backend runs alone before loading beside others."""
    prepare = backend_row(spec.backend).prepare_load
    if prepare is None:
        return
    try:
        prepare(spec.path)
    except Exception as exc:
        raise EngineLoadError(
            f"cannot load the {role.value} model: {exc}", role=str(role), path=spec.path
        ) from exc


class _Loads:
    """The engines loaded so far. Once abandoned (a load failed, or the caller was interrupted),
    a load that finishes later closes its engine at once instead of adding it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self.engines: dict[_Key, Engine] = {}
        self.seconds: dict[_Key, float] = {}

    def add(self, key: _Key, engine: Engine, seconds: float) -> None:
        with self._lock:
            if not self._abandoned:
                self.engines[key], self.seconds[key] = engine, seconds
                return
        _close_now([engine])

    def abandon(self) -> list[Engine]:
        """Stop taking engines; the ones taken so far, for the caller to close."""
        with self._lock:
            self._abandoned = True
            return list(self.engines.values())


def _load_together(
    loads: _Loads, jobs: Mapping[_Key, tuple[Role, EngineSpec]], concurrency: int
) -> None:
    """Load `jobs` on a pool, each engine into `loads` as it finishes. When one fails, those not
    started never start and those running finish (a load cannot be stopped midway); the error
    raised is that of the first job, in load order, to fail."""
    pool = ThreadPoolExecutor(
        max_workers=min(concurrency, len(jobs)), thread_name_prefix="glore-load"
    )
    futures: dict[Future[tuple[Engine, float]], _Key] = {}
    finished = False
    try:
        for key, job in jobs.items():
            future = pool.submit(_timed_load, *job)
            # Runs in the loading thread when the load ends, so an engine finishing after an
            # interrupt is still handed to `loads`, which closes it once abandoned.
            future.add_done_callback(functools.partial(_took, loads, key))
            futures[future] = key
        for done in as_completed(futures):
            if done.exception() is not None:
                break
        for future in futures:
            future.cancel()
        wait(futures)
        finished = True
    finally:
        for future in futures:
            future.cancel()
        # After a normal end, wait for the callbacks too (they run after `wait` wakes); after an
        # interrupt, return at once: the loads still running close their engines themselves.
        pool.shutdown(wait=finished)
    order = list(jobs)
    failed = sorted(
        (f for f in futures if not f.cancelled() and f.exception() is not None),
        key=lambda f: order.index(futures[f]),
    )
    for other in failed[1:]:
        log.warning("loading %s failed too: %s", jobs[futures[other]][0].value, other.exception())
    if failed:
        error = failed[0].exception()
        assert error is not None
        raise error


def _took(loads: _Loads, key: _Key, future: Future[tuple[Engine, float]]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    loads.add(key, *future.result())


def run_dir_specs(
    run_dir: str | os.PathLike[str],
    *,
    backend: str = Backend.HF,
    options: Mapping[str, object] | None = None,
    roles: Iterable[Role] = tuple(Role),
) -> dict[Role, EngineSpec]:
    """Specs for a run directory laid out by role (runs/NAME/policy/, orm/, ...)."""
    root = Path(run_dir)
    return {
        Role(r): EngineSpec(str(root / Role(r).value), backend, dict(options or {})) for r in roles
    }


def _shares_adapters(role: Role, spec: EngineSpec) -> bool:
    # Both backends serve several LoRA adapters from one loaded generator (vLLM's multi-LoRA,
    # peft's mixed-adapter batches on HF); scorers load one model each.
    return not role.is_scorer


def adapter_spec(role: Role, spec: EngineSpec) -> EngineSpec:
    """A role whose folder holds a LoRA adapter (adapter_config.json, no config.json) is served
    as its base model with that adapter, named after the role. The base is the adapter config's
    `base_model_name_or_path`, relative to the adapter's folder (a run writes `../policy`)."""
    folder = Path(spec.path)
    config = folder / "adapter_config.json"
    if (folder / "config.json").exists() or not config.exists():
        return spec
    try:
        base_name = json.loads(config.read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as exc:
        raise EngineLoadError(
            f"unreadable LoRA adapter config: {exc!r}", role=str(role), path=spec.path
        ) from exc
    if role.is_scorer:
        raise EngineLoadError(
            "a reward model served from a LoRA adapter is not supported; merge it",
            role=str(role),
            path=spec.path,
        )
    base = (folder / base_name).resolve() if not Path(base_name).is_absolute() else base_name
    name = Role(role).value
    known = spec.options.get("lora_adapters") or {}
    adapters = {**(dict(known) if isinstance(known, Mapping) else {}), name: str(folder.resolve())}
    options = {**spec.options, "lora_adapters": adapters, "adapter": name}
    return EngineSpec(str(base), spec.backend, options)


def _base_spec(role: Role, spec: EngineSpec) -> EngineSpec:
    """The spec without its per-role LoRA choice, when adapters can share a base engine."""
    if not _shares_adapters(role, spec):
        return spec
    options = {k: v for k, v in spec.options.items() if k not in ("adapter", "lora_adapters")}
    return EngineSpec(spec.path, spec.backend, options)


def _adapters(role: Role, spec: EngineSpec) -> dict[str, Any]:
    if not _shares_adapters(role, spec):
        return {}
    adapters = spec.options.get("lora_adapters") or {}
    if not isinstance(adapters, Mapping):
        raise EngineLoadError(
            "lora_adapters must map adapter names to paths", role=str(role), path=spec.path
        )
    return dict(adapters)


def _close_now(engines: list[Engine]) -> None:
    """Close engines from sync code, whether or not this thread runs an event loop."""
    if not engines:
        return

    async def close_all() -> None:
        await asyncio.gather(*(e.close() for e in engines), return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(close_all()), daemon=True)
    thread.start()
    thread.join()
