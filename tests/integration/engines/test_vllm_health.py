"""A vLLM engine whose core process dies is reported unhealthy (what /ready relies on)."""

from __future__ import annotations

import asyncio
import signal
import time

import psutil
import pytest

from engines.base import EngineError, ScoreRequest
from tests.integration.engines.conftest import VLLM_OPTIONS
from tests.support.tiny_models import TinyCheckpoints

pytestmark = pytest.mark.vllm


def test_a_vllm_engine_whose_process_died_reports_unhealthy(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    from engines.vllm import VLLMOptions, VLLMScorer

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    scorer = VLLMScorer(tiny_checkpoints.scorer, VLLMOptions.model_validate(VLLM_OPTIONS))
    try:
        request = ScoreRequest("How many?", ("1 + 1 = 2", "The answer is 2."))
        assert scorer.health().healthy
        assert len(asyncio.run(scorer.score([request]))[0].step_probs) == 2
        # Only the EngineCore process this engine started (not multiprocessing's helpers).
        started = [
            p
            for p in me.children(recursive=True)
            if p.pid not in before and "EngineCore" in " ".join([*p.cmdline(), p.name()])
        ]
        assert started
        for p in started:
            p.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while scorer.health().healthy and time.monotonic() < deadline:
            time.sleep(0.2)
        state = scorer.health()
        assert not state.healthy
        assert "dead" in state.detail
        with pytest.raises(EngineError):
            asyncio.run(scorer.score([request]))
    finally:
        asyncio.run(scorer.close())
    assert "closed" in scorer.health().detail
