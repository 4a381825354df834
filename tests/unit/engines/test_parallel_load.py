"""load_engines loads engines together where their backend's row allows it: two throwaway rows
(one that may load in parallel, one that may not) whose engines block, fail or interrupt on cue,
so the order, failure and close guarantees are seen without a model."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engines.backends import BACKENDS, BackendSpec
from engines.base import (
    Completion,
    EngineHealth,
    EngineLoadError,
    EngineSpec,
    LikelihoodRequest,
    Role,
    SamplingParams,
    ScoreRequest,
    StepScores,
    TokenLogprobs,
)
from engines.options import EngineOptions
from engines.registry import load_engines, load_engines_async

# Long enough never to trip on a loaded machine; a broken expectation fails well before it.
PATIENCE_S = 30.0


@dataclass
class Script:
    """What loading each checkpoint folder does (by its name), and what happened."""

    on_load: dict[str, Callable[[], object]] = field(default_factory=dict)
    loading: int = 0
    most_at_once: int = 0
    built: list[_Engine] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, engine: _Engine) -> None:
        with self.lock:
            self.loading += 1
            self.most_at_once = max(self.most_at_once, self.loading)
        try:
            self.on_load.get(Path(engine.path).name, lambda: None)()
        finally:
            with self.lock:
                self.loading -= 1
        with self.lock:
            self.built.append(engine)

    def engine(self, folder: str) -> _Engine:
        (found,) = [e for e in self.built if Path(e.path).name == folder]
        return found


SCRIPT = Script()


class _Engine:
    def __init__(self, path: str, options: EngineOptions, *, name: str | None = None) -> None:
        self.path, self.name, self.closed = path, name or "scripted", False
        SCRIPT.load(self)

    def health(self) -> EngineHealth:
        return EngineHealth(not self.closed, "scripted")

    async def close(self) -> None:
        self.closed = True


class _Generator(_Engine):
    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        return [[Completion(self.path, 1, "stop")] for _ in prompts]

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        return [TokenLogprobs((0.0,)) for _ in requests]


class _Scorer(_Engine):
    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        return [StepScores((0.5,)) for _ in requests]


class _Options(EngineOptions):
    max_rows: int = 4


@pytest.fixture(autouse=True)
def rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, parallel in (("together", True), ("alone", False)):
        row = BackendSpec(
            generator=_Generator,
            scorer=_Scorer,
            options=_Options,
            batch_size_option="max_rows",
            parallel_load=parallel,
        )
        monkeypatch.setitem(BACKENDS, name, row)
    global SCRIPT
    SCRIPT = Script()
    yield


def _specs(tmp_path: Path, backend: str = "together") -> dict[Role, EngineSpec]:
    """One engine per role, each on a folder named after the role."""
    return {r: EngineSpec(str(tmp_path / r.value), backend) for r in Role}


def _wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not done():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


def test_engines_of_a_parallel_backend_load_at_the_same_time(tmp_path: Path) -> None:
    # Every load waits for all five to be under way: one after another, none would finish.
    everyone = threading.Barrier(len(Role), timeout=PATIENCE_S)
    SCRIPT.on_load = {r.value: everyone.wait for r in Role}
    engines = load_engines(_specs(tmp_path))
    assert SCRIPT.most_at_once == len(Role)
    assert len(engines.unique_engines()) == len(Role)
    asyncio.run(engines.close())


def test_concurrency_one_loads_one_engine_at_a_time(tmp_path: Path) -> None:
    engines = load_engines(_specs(tmp_path), concurrency=1)
    assert SCRIPT.most_at_once == 1 and len(SCRIPT.built) == len(Role)
    asyncio.run(engines.close())


def test_concurrency_caps_the_loads_at_once(tmp_path: Path) -> None:
    pair = threading.Barrier(2, timeout=PATIENCE_S)
    SCRIPT.on_load = {"policy": pair.wait, "orm": pair.wait}
    engines = load_engines(_specs(tmp_path), concurrency=2)
    assert SCRIPT.most_at_once == 2
    asyncio.run(engines.close())


def test_a_backend_without_parallel_load_loads_alone(tmp_path: Path) -> None:
    specs = _specs(tmp_path, backend="alone")
    engines = load_engines(specs)
    assert SCRIPT.most_at_once == 1
    # Beside a parallel backend, its engines still load one at a time and before the others.
    SCRIPT.built.clear()
    mixed = {**specs, Role.ORM: EngineSpec(str(tmp_path / "orm"), "together")}
    mixed[Role.SORM] = EngineSpec(str(tmp_path / "sorm"), "together")
    more = load_engines(mixed)
    assert [Path(e.path).name for e in SCRIPT.built][:3] == [
        "policy",
        "refine_global",
        "refine_local",
    ]
    asyncio.run(engines.close())
    asyncio.run(more.close())


def test_the_result_keeps_load_order_whichever_engine_finishes_first(tmp_path: Path) -> None:
    # The policy finishes last: it waits until every other engine is built.
    SCRIPT.on_load = {"policy": lambda: _wait_until(lambda: len(SCRIPT.built) == 4)}
    engines = load_engines(_specs(tmp_path))
    assert SCRIPT.built[-1].path.endswith("policy")
    assert [Path(e.path).name for e in engines.unique_engines()] == [r.value for r in Role]  # type: ignore[attr-defined]
    assert list(engines.load_seconds) == [r.value for r in Role]
    assert engines.load_wall_seconds is not None
    assert all(s >= 0 for s in engines.load_seconds.values())
    for role in Role:
        assert Path(engines._get(role).path).name == role.value  # type: ignore[attr-defined]
    asyncio.run(engines.close())


def test_roles_sharing_a_checkpoint_share_one_engine_when_loading_together(
    tmp_path: Path,
) -> None:
    specs = _specs(tmp_path)
    specs[Role.REFINE_GLOBAL] = specs[Role.REFINE_LOCAL] = specs[Role.POLICY]
    specs[Role.SORM] = specs[Role.ORM]
    engines = load_engines(specs)
    assert len(SCRIPT.built) == 2
    assert engines.policy is engines.refine_global is engines.refine_local
    assert engines.orm is engines.sorm
    assert list(engines.load_seconds) == ["policy+refine_global+refine_local", "orm+sorm"]
    asyncio.run(engines.close())


def _fail() -> None:
    raise RuntimeError("no such weights")


def test_a_failing_load_closes_every_other_engine_even_one_still_loading(
    tmp_path: Path,
) -> None:
    # All five under way, orm fails while refine_local is still loading: refine_local
    # finishes, then closes.
    everyone = threading.Barrier(len(Role), timeout=PATIENCE_S)

    def orm() -> None:
        everyone.wait()
        _fail()

    def refine_local() -> None:
        everyone.wait()
        _wait_until(lambda: SCRIPT.loading == 1)

    SCRIPT.on_load = {r.value: everyone.wait for r in Role}
    SCRIPT.on_load.update(orm=orm, refine_local=refine_local)
    with pytest.raises(EngineLoadError, match="no such weights") as err:
        load_engines(_specs(tmp_path))
    assert err.value.role == "orm" and err.value.path == str(tmp_path / "orm")
    assert {Path(e.path).name for e in SCRIPT.built} == {
        "policy",
        "sorm",
        "refine_global",
        "refine_local",
    }
    assert all(e.closed for e in SCRIPT.built)


def test_when_several_loads_fail_the_error_names_the_first_in_load_order(
    tmp_path: Path,
) -> None:
    # All five under way, sorm fails first in time; orm, before it in load order, fails once
    # sorm has.
    everyone = threading.Barrier(len(Role), timeout=PATIENCE_S)
    failed = threading.Event()

    def sorm() -> None:
        everyone.wait()
        failed.set()
        _fail()

    def orm() -> None:
        everyone.wait()
        failed.wait(PATIENCE_S)
        _fail()

    SCRIPT.on_load = {r.value: everyone.wait for r in Role}
    SCRIPT.on_load.update(orm=orm, sorm=sorm)
    with pytest.raises(EngineLoadError) as err:
        load_engines(_specs(tmp_path))
    assert err.value.role == "orm"
    assert all(e.closed for e in SCRIPT.built) and len(SCRIPT.built) == 3


def test_a_failing_serial_load_closes_the_engines_before_it(tmp_path: Path) -> None:
    SCRIPT.on_load = {"sorm": _fail}
    with pytest.raises(EngineLoadError) as err:
        load_engines(_specs(tmp_path, backend="alone"))
    assert err.value.role == "sorm"
    assert [Path(e.path).name for e in SCRIPT.built] == ["policy", "orm"]
    assert all(e.closed for e in SCRIPT.built)


def test_an_interrupted_load_leaks_no_engine(tmp_path: Path) -> None:
    # While policy loads, the caller gets Ctrl-C; policy finishes later and must close itself.
    release = threading.Event()
    caller = threading.main_thread().ident
    assert caller is not None

    def policy() -> None:
        _wait_until(lambda: len(SCRIPT.built) == 4)
        # At the caller's thread itself, so that its wait for the loads is interrupted.
        signal.pthread_kill(caller, signal.SIGINT)
        release.wait(PATIENCE_S)

    SCRIPT.on_load = {"policy": policy}
    with pytest.raises(KeyboardInterrupt):
        load_engines(_specs(tmp_path))
    others = list(SCRIPT.built)
    assert len(others) == 4 and all(e.closed for e in others)
    release.set()
    _wait_until(lambda: len(SCRIPT.built) == 5)
    _wait_until(lambda: SCRIPT.engine("policy").closed)


async def test_a_cancelled_async_load_closes_its_engines_once_they_load(tmp_path: Path) -> None:
    release = threading.Event()
    SCRIPT.on_load = {"policy": lambda: release.wait(PATIENCE_S)}
    task = asyncio.create_task(load_engines_async(_specs(tmp_path)))
    await asyncio.to_thread(_wait_until, lambda: len(SCRIPT.built) == 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await asyncio.to_thread(_wait_until, lambda: len(SCRIPT.built) == 5)
    await asyncio.to_thread(_wait_until, lambda: all(e.closed for e in SCRIPT.built))


def test_concurrency_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        load_engines(_specs(tmp_path), concurrency=0)


def test_the_service_loads_its_engines_with_its_load_concurrency(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from glore.app import create_app
    from service.settings import Settings

    roles = {r.value: {"path": str(tmp_path / r.value), "backend": "together"} for r in Role}
    for concurrency, most in ((1, 1), (len(Role), len(Role))):
        SCRIPT.built.clear()
        SCRIPT.most_at_once = 0
        everyone = threading.Barrier(len(Role), timeout=PATIENCE_S)
        # One at a time, each load lingers, so loads that overlapped would be seen to.
        linger: Callable[[], object] = (lambda: time.sleep(0.2)) if most == 1 else everyone.wait
        SCRIPT.on_load = {r.value: linger for r in Role}
        settings = Settings(load_concurrency=concurrency, **roles)  # type: ignore[arg-type]
        with TestClient(create_app(settings)) as client:
            _wait_until(lambda: client.get("/ready").status_code == 200)
            assert SCRIPT.most_at_once == most
        assert all(e.closed for e in SCRIPT.built)


def test_the_settings_refuse_a_load_concurrency_below_one() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="load_concurrency"):
        Settings(load_concurrency=0)
