"""The outcome reward model: trained on the final correctness of the rollouts' drafts and of
extra drafts of more training questions (the ORM needs no continuations, so its data is cheap to
widen; the paper samples far more ORM drafts than SORM ones)."""

from __future__ import annotations

from pathlib import Path

from engines.base import Role
from training import generation
from training.graph import Report, Run, checkpoint_hash, file_hash
from training.rollouts import heldout_rows, read_jsonl, shard_seed, write_jsonl_atomic
from training.stages import _reward
from training.vstar import DraftRollout, orm_examples

EXTRA_FILE = "orm_extra.jsonl"  # under data/


def stage_orm(run: Run, seed: int) -> Report:
    policy = run.require(Role.POLICY)
    rollouts = _reward.rollouts(run)
    extra = _extra_drafts(run, policy, seed)
    rows = orm_examples([*rollouts, *extra])
    fitted = _reward.fit(run, Role.ORM, run.cfg.orm, rows, seed)
    return {
        "counts": fitted.counts(len(rows), extra_drafts=len(extra)),
        "metrics": {"heldout": fitted.evaluation, "final_loss": fitted.final_loss},
        "hashes": {
            str(Role.ORM): checkpoint_hash(fitted.path),
            **({"orm_extra": file_hash(run.data_dir / EXTRA_FILE)} if extra else {}),
        },
    }


def _extra_drafts(run: Run, policy: Path, seed: int) -> list[DraftRollout]:
    """Outcome-labelled drafts of training questions the V* rollouts did not use, written to
    data/orm_extra.jsonl for the record (and for the refiners and the reranker)."""
    cfg, rcfg = run.cfg.orm, run.cfg.rollouts
    if cfg.extra_questions <= 0:
        return []
    if run.acc.is_main_process:
        start = rcfg.questions or 0
        questions = run.problems("train")[start : start + cfg.extra_questions]
        spec = generation.engine_spec(policy, rcfg.backend, rcfg.max_batch_size)
        gen = generation.load_generator(Role.POLICY, spec)
        try:
            rows = heldout_rows(
                gen,
                questions,
                rcfg,
                seed=shard_seed(seed, 0, "orm"),
                max_new_tokens=rcfg.max_new_tokens,
                drafts_per_question=cfg.extra_drafts,
            )
        finally:
            generation.close(gen)
        write_jsonl_atomic(run.data_dir / EXTRA_FILE, (r.to_dict() for r in rows))
    run.acc.wait_for_everyone()
    return read_extra_drafts(run)


def read_extra_drafts(run: Run) -> list[DraftRollout]:
    """The ORM stage's outcome-labelled extra drafts (none when it drafted none)."""
    path = run.data_dir / EXTRA_FILE
    if run.cfg.orm.extra_questions <= 0 or not path.exists():
        return []
    return [DraftRollout.from_dict(d) for d in read_jsonl(path)]


SPEC = _reward.spec(Role.ORM, stage_orm)
