"""The training recipe: a typed config per stage, from YAML presets plus `key=value` overrides.

Every field has help text (as in TRL's configs); the resolved recipe is saved beside every
checkpoint and hashed into the run manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
PRESETS = ("smoke", "tiny", "tiny-wide", "tiny-narrow")


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the field."""


@dataclass
class DataConfig:
    source: str = field(default="synthetic", metadata={"help": "synthetic | gsm8k"})
    task: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "TaskConfig fields of the synthetic generator"}
    )
    n_train: int = field(default=2000, metadata={"help": "training questions (synthetic)"})
    n_val: int = field(default=100, metadata={"help": "validation questions (synthetic)"})
    n_test: int = field(default=200, metadata={"help": "held-out test questions"})
    gsm8k_dir: str | None = field(
        default=None,
        metadata={
            "help": "GSM8K: a folder with train.jsonl and test.jsonl (relative to the working "
            "directory); required for source gsm8k unless data.hub names the dataset"
        },
    )
    hub: str | None = field(
        default=None,
        metadata={
            "help": "GSM8K through the `datasets` library instead: a hub name (openai/gsm8k) "
            "or a local dataset folder, read by datasets.load_dataset (splits train and test)"
        },
    )
    hub_config: str | None = field(
        default=None, metadata={"help": "the dataset's configuration, e.g. main for openai/gsm8k"}
    )


@dataclass
class ModelConfig:
    base: str | None = field(
        default=None, metadata={"help": "HF causal LM path to fine-tune; None = from scratch"}
    )
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary (from scratch)"})
    hidden_size: int = field(default=128, metadata={"help": "width of each layer (from scratch)"})
    num_layers: int = field(default=4, metadata={"help": "transformer layers (from scratch)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads per layer (from scratch)"})
    intermediate_size: int = field(
        default=512, metadata={"help": "width of the MLP inside each layer (from scratch)"}
    )
    max_position_embeddings: int = field(
        default=512, metadata={"help": "longest sequence in tokens (from scratch)"}
    )
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (merged on save)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of each adapted matrix"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA inputs"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in the backward pass: less memory, more time"},
    )


@dataclass
class TrainConfig:
    """One supervised stage: SFT (policy, refiners) or reward-model training (ORM, SORM)."""

    epochs: float = field(default=1.0, metadata={"help": "passes over the data"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per step per process"})
    grad_accum: int = field(
        default=1, metadata={"help": "steps whose gradients add up before one optimizer update"}
    )
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decay floor, x lr"})
    warmup_steps: int = field(
        default=20, metadata={"help": "updates of linear warmup before the cosine decay"}
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay (not on biases and norms)"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip; 0 = off"})
    max_length: int = field(default=512, metadata={"help": "tokens; longer examples are dropped"})
    log_every: int = field(default=10, metadata={"help": "log the loss every this many updates"})
    checkpoint_minutes: float = field(
        default=5.0,
        metadata={
            "help": "save the trainer's state this often (minutes), so an interrupted stage "
            "resumes where it stopped; 0 = after every update",
            "hash": False,
        },
    )
    init: str = field(
        default="policy",
        metadata={"help": "policy: start from the trained policy; base: from model.base/scratch"},
    )


@dataclass
class PolicyConfig(TrainConfig):
    init: str = field(
        default="base",
        metadata={"help": "not read: the policy starts from model.base, or from scratch"},
    )
    eval_questions: int = field(default=200, metadata={"help": "test questions for greedy acc"})
    max_new_tokens: int = field(
        default=160, metadata={"help": "tokens per greedy answer in the test evaluation"}
    )


@dataclass
class ExpertIterationConfig:
    rounds: int = field(default=0, metadata={"help": "0 = off; each round samples and re-fits"})
    samples: int = field(default=4, metadata={"help": "samples per training question"})
    questions: int | None = field(default=None, metadata={"help": "None = all training questions"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    epochs: float = field(
        default=1.0, metadata={"help": "passes over references + kept samples, per round"}
    )
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate of each round's fit"})


@dataclass
class RolloutConfig:
    questions: int | None = field(default=None, metadata={"help": "training questions; None=all"})
    drafts: int = field(default=4, metadata={"help": "drafts per question (temperature below)"})
    k: int = field(default=8, metadata={"help": "continuations per step prefix (V*)"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature of drafts and continuations"}
    )
    max_new_tokens: int = field(default=160, metadata={"help": "tokens per draft or continuation"})
    max_steps: int = field(default=12, metadata={"help": "drafts with more steps are truncated"})
    shard_questions: int = field(default=32, metadata={"help": "questions per JSONL shard"})
    heldout_questions: int = field(
        default=200, metadata={"help": "test questions drafted for reward-model evaluation"}
    )
    heldout_drafts: int = field(default=2, metadata={"help": "drafts per held-out question"})
    backend: str = field(default="hf", metadata={"help": "engine backend: hf | vllm"})
    max_batch_size: int = field(
        default=256, metadata={"help": "sequences the engine generates at once"}
    )


def _other_models(default: Any, owner: str) -> Any:
    """A field of the other reward model's config, kept in this one so that every recipe and
    every run's recorded recipe (and the inputs hashes made from it) reads as it did when one
    config served both; `check` refuses a value other than the default."""
    return field(
        default=default,
        metadata={"help": f"not read here: {owner}'s option, set it there", "unused": owner},
    )


@dataclass
class OrmConfig(TrainConfig):
    """The outcome reward model: a token classifier trained on each draft's final correctness."""

    extra_questions: int = field(
        default=0,
        metadata={
            "help": "more training questions, beyond the rollouts', drafted for outcome labels "
            "only (data/orm_extra.jsonl; the refiners and reranker also learn from them)"
        },
    )
    extra_drafts: int = field(default=4, metadata={"help": "drafts per extra question"})
    soft_labels: bool = _other_models(False, "sorm")
    propagate: bool = _other_models(True, "sorm")
    balance: bool = _other_models(True, "sorm")
    consistency_check: bool = _other_models(True, "sorm")


@dataclass
class SormConfig(TrainConfig):
    """The stepwise ORM: a token classifier trained on V* labels of each step prefix."""

    extra_questions: int = _other_models(0, "orm")
    extra_drafts: int = _other_models(4, "orm")
    soft_labels: bool = field(
        default=False,
        metadata={"help": "train on each prefix's success fraction instead of 0/1 V* labels"},
    )
    propagate: bool = field(
        default=True, metadata={"help": "a positive step makes every earlier step positive"}
    )
    balance: bool = field(
        default=True,
        metadata={"help": "balance positive and negative labels per step index (drop extras)"},
    )
    consistency_check: bool = field(
        default=True,
        metadata={
            "help": "a continuation verifies a prefix only if it uses the value the prefix's "
            "last step states (the paper's consistency check)"
        },
    )


@dataclass
class RefinerConfig(TrainConfig):
    adapters: bool = field(
        default=False,
        metadata={
            "help": "train each refiner as a LoRA adapter of the policy (model.lora_r, "
            "lora_alpha, lora_dropout), saved unmerged with base ../policy, so serving loads "
            "one base for the policy and both refiners"
        },
    )
    keep_share: float = field(
        default=0.5, metadata={"help": "share of pairs that map a correct draft to itself"}
    )
    global_extra_drafts: bool = field(
        default=True,
        metadata={
            "help": "global: also pair the ORM's outcome-labelled extra drafts "
            "(data/orm_extra.jsonl)"
        },
    )
    local_extra_drafts: bool = field(
        default=True,
        metadata={
            "help": "local: also pair the ORM's extra drafts that have a correct sibling, with "
            "the critique where the wrong draft leaves it (training.pairs.sibling_local_pairs)"
        },
    )
    local_epochs: float | None = field(
        default=None, metadata={"help": "local refiner's passes; None = epochs"}
    )
    use_reference: bool = field(
        default=True, metadata={"help": "fall back to the reference when no draft is correct"}
    )
    eval_drafts: int = field(default=100, metadata={"help": "held-out incorrect drafts to fix"})
    max_new_tokens: int = field(
        default=160, metadata={"help": "tokens per refinement in the held-out evaluation"}
    )


@dataclass
class RerankerConfig:
    variants: dict[str, list[str]] = field(
        default_factory=lambda: {
            "lp_orm": ["orm_logit", "lp_mean", "lp_min", "lp_sum", "lp_low_share"],
            "lp_only": ["lp_mean", "lp_min", "lp_sum", "lp_low_share"],
            "lp_orm_kind": ["kind_global", "kind_local", "orm_logit", "lp_mean", "lp_min"],
            "lp_kind": ["kind_global", "kind_local", "lp_mean", "lp_min"],
        },
        metadata={
            "help": "name -> features (engines.reranker.FEATURES) of each linear reranker fitted "
            "with a within-question pairwise loss"
        },
    )
    default: str = field(
        default="lp_kind",
        metadata={
            "help": "the reranker the service uses: a variant above or a built-in (orm, "
            "policy_mean_logprob); choose it on the dev split (glore eval --split dev)"
        },
    )
    continuations: bool = field(
        default=True,
        metadata={"help": "also learn from every V* continuation (prefix + continuation)"},
    )
    extra_drafts: bool = field(
        default=True, metadata={"help": "also learn from the ORM's outcome-labelled extra drafts"}
    )
    candidate_questions: int = field(
        default=400,
        metadata={
            "help": "training questions (none that a rollout or extra draft came from) on which "
            "GLoRe's {draft, global, local} are generated and outcome-labelled for the fit"
        },
    )
    l2: float = field(default=1e-3, metadata={"help": "L2 penalty on the standardised weights"})
    holdout_share: float = field(
        default=0.15,
        metadata={"help": "share of training questions held out to measure pairwise accuracy"},
    )
    backend: str = field(default="hf", metadata={"help": "engine backend reading the features"})
    max_batch_size: int = field(default=64, metadata={"help": "rows per forward pass"})


@dataclass
class ProfileConfig:
    """The question profile (training.profile): where the service starts warning."""

    false_alarm_rate: float = field(
        default=0.01,
        metadata={"help": "share of validation questions each threshold may flag (chosen there)"},
    )
    min_unseen_share: float = field(
        default=0.1,
        metadata={"help": "never warn of unseen words below this share of a question's tokens"},
    )
    train_questions: int = field(
        default=1000,
        metadata={"help": "training questions whose likelihood is recorded (0 = all)"},
    )
    backend: str = field(default="hf", metadata={"help": "engine backend reading the policy"})
    max_batch_size: int = field(default=64, metadata={"help": "rows per forward pass"})


@dataclass
class RunConfig:
    name: str = field(
        default="run", metadata={"help": "the run's name; run = the --out folder's name"}
    )
    seed: int = field(
        default=0, metadata={"help": "the run's seed: the data splits, and each stage's offset"}
    )
    threads: int = field(default=2, metadata={"help": "torch threads per process"})
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": "the questions: synthetic or GSM8K"}
    )
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata={"help": "the base model or the one from scratch"}
    )
    policy: PolicyConfig = field(
        default_factory=PolicyConfig, metadata={"help": "the policy's supervised fine-tuning"}
    )
    expert_iteration: ExpertIterationConfig = field(
        default_factory=ExpertIterationConfig,
        metadata={"help": "rounds of sampling the policy and re-fitting on correct samples"},
    )
    rollouts: RolloutConfig = field(
        default_factory=RolloutConfig,
        metadata={"help": "the policy's drafts and V* continuations, held-out drafts too"},
    )
    orm: OrmConfig = field(
        default_factory=OrmConfig, metadata={"help": "the outcome reward model's training"}
    )
    sorm: SormConfig = field(
        default_factory=SormConfig, metadata={"help": "the stepwise ORM's training"}
    )
    refiners: RefinerConfig = field(
        default_factory=RefinerConfig,
        metadata={"help": "the global and local refiners' training"},
    )
    reranker: RerankerConfig = field(
        default_factory=RerankerConfig,
        metadata={"help": "the linear rerankers fitted on outcome-labelled samples"},
    )
    profile: ProfileConfig = field(
        default_factory=ProfileConfig,
        metadata={"help": "the question profile the service warns with"},
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hashed_dict(self) -> dict[str, Any]:
        """`to_dict` less the fields that never change what a stage makes (see `_hashed`)."""
        out: dict[str, Any] = _hashed(self)
        return out

    def section_hash(self, *names: str) -> str:
        """A short content hash of some sections (a stage's inputs), for the manifest."""
        d = self.hashed_dict()
        blob = json.dumps({n: d[n] for n in names}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _hashed(obj: Any) -> Any:
    """`obj` as a dict for hashing: fields marked `"hash": False` (how often to checkpoint:
    they change how a stage runs, never what it makes) are left out, so setting them never makes
    a finished run stale."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: _hashed(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("hash", True)
        }
    if isinstance(obj, list | tuple):
        return [_hashed(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _hashed(v) for k, v in obj.items()}
    return obj


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"{path}: unknown field (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, path)  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, hint, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{path}: may not be null")
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return value.lower() in {"true", "1", "yes"}
            return bool(value)
        if hint is int or text.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float or text.startswith("float"):
            return float(value)
        if hint is str or text.startswith("str"):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read {value!r} as {text}") from exc
    return value


def recipe_path(preset: str) -> Path:
    path = RECIPES_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise ConfigError(f"preset: unknown preset {preset!r} (known: {known})")
    return path


def parse_override(item: str) -> tuple[list[str], Any]:
    """`policy.lr=3e-4` -> (["policy", "lr"], 0.0003); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. policy.lr=3e-4")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r}: empty key")
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(
    *,
    preset: str | None = None,
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """Resolve a recipe: the YAML file (or preset), then each override in order."""
    if preset and recipe:
        raise ConfigError("preset/recipe: give one, not both")
    path = Path(recipe) if recipe else recipe_path(preset or "tiny")
    if recipe and not path.is_file() and (RECIPES_DIR / path.name).is_file():
        path = RECIPES_DIR / path.name  # `--recipe example-gsm8k.yaml` names a shipped recipe
    if not path.is_file():
        raise ConfigError(f"recipe: no such file {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: expected a mapping at the top level")
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    cfg: RunConfig = _build(RunConfig, data, "")
    check(cfg)
    return cfg


def check(cfg: RunConfig) -> None:
    """What no single field can say alone: a GSM8K run needs data that the user has, and a
    field kept for another section (the ORM's in the SORM's config) takes no value of its own."""
    d = cfg.data
    if d.source == "gsm8k" and not d.gsm8k_dir and not d.hub:
        raise ConfigError(
            "data.gsm8k_dir: required for data.source=gsm8k: a folder with train.jsonl and "
            "test.jsonl, e.g. data.gsm8k_dir=/data/gsm8k (or data.hub=openai/gsm8k "
            "data.hub_config=main to read it through the datasets library)"
        )
    if d.gsm8k_dir and d.hub:
        raise ConfigError("data.hub: give data.gsm8k_dir or data.hub, not both")
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub) if dataclasses.is_dataclass(sub) else ():
            owner = f.metadata.get("unused")
            if owner and getattr(sub, f.name) != f.default:
                raise ConfigError(
                    f"{section.name}.{f.name}: not read here; it is {owner}'s option "
                    f"(set {owner}.{f.name})"
                )
