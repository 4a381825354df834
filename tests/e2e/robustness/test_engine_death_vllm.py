"""A real engine death: the policy's vLLM EngineCore process is killed (SIGKILL) while a request
is generating. No test hook: the request gets a clean 503, /ready turns 503, the process stops."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal

import httpx
import psutil
import pytest

from tests.e2e.robustness.live import SLOW_ENV, SLOW_SOLVE, in_flight, wait_until
from tests.support.server import start_server
from tests.support.tiny_models import TinyCheckpoints

ROLES = ["POLICY", "ORM", "SORM", "REFINE_GLOBAL", "REFINE_LOCAL"]


def engine_cores(pid: int) -> list[psutil.Process]:
    """The server's vLLM EngineCore children, oldest first (the registry loads the policy
    first, so the oldest serves the policy and both refiners, which share its checkpoint)."""
    cores = [
        p
        for p in psutil.Process(pid).children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
    ]
    return sorted(cores, key=lambda p: p.create_time())


@pytest.mark.vllm
@pytest.mark.slow
def test_killing_the_policys_engine_core_mid_request_gives_503_and_ready_503(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    env = {"OMP_NUM_THREADS": "1", "GLORE_LOG_LEVEL": "WARNING", **SLOW_ENV}
    options = json.dumps({"cpu_kvcache_space_gib": 1, "enforce_eager": True})
    for role in ROLES:
        env[f"GLORE_{role}__BACKEND"] = "vllm"
        env[f"GLORE_{role}__OPTIONS"] = options
    with (
        start_server(tiny_checkpoints.run_dir, env=env, timeout=600) as server,
        httpx.Client(base_url=server.url, timeout=120) as c,
    ):
        cores = engine_cores(server.process.pid)
        assert len(cores) == 2, [p.cmdline() for p in cores]  # one generator, one scorer
        with cf.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(c.post, "/solve", json=SLOW_SOLVE)
            wait_until(lambda: in_flight(c) == 1, what="the solve to be admitted")
            cores[0].send_signal(signal.SIGKILL)
            r = slow.result(timeout=120)
        assert r.status_code == 503, r.text[:500]
        error = r.json()["error"]
        assert error["code"] == "engine_unavailable" and error["message"]
        assert r.headers["retry-after"] == "1" and "Traceback" not in r.text

        wait_until(lambda: c.get("/ready").status_code == 503, what="/ready to turn 503")
        ready = c.get("/ready").json()["error"]
        dead = {d["loc"][1] for d in ready["details"]}
        assert dead == {"policy", "refine_global", "refine_local"}, ready
        assert c.get("/health").status_code == 200
        after = c.post("/solve", json={"question": SLOW_SOLVE["question"]})
        assert after.status_code == 503 and after.json()["error"]["code"] == "not_ready"
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=60) in {0, -signal.SIGTERM}
