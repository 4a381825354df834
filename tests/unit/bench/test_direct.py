"""bench.direct: a kind of model server's share of recorded plans keeps their phases in order."""

from __future__ import annotations

from bench.direct import SIDES, only


def test_only_keeps_one_kind_of_servers_calls_in_their_phases_and_drops_empty_ones() -> None:
    plan = [
        [{"role": "policy"}],  # draft
        [{"role": "orm"}, {"role": "sorm"}],  # scoring
        [{"role": "refine_global"}, {"role": "refine_local"}, {"role": "policy"}],
        [{"role": "orm"}],  # rerank
    ]
    generators, scorers = only([plan], SIDES["generators"]), only([plan], SIDES["scorers"])
    assert [[c["role"] for c in p] for p in generators[0]] == [
        ["policy"],
        ["refine_global", "refine_local", "policy"],
    ]
    assert [[c["role"] for c in p] for p in scorers[0]] == [["orm", "sorm"], ["orm"]]
    assert plan[1] == [{"role": "orm"}, {"role": "sorm"}]  # the plan itself is left whole
