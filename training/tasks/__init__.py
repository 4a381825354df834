"""The math task: synthetic GSM8K-style problems with exact step ground truth, the step checker,
the GSM8K loader and fixed splits.
"""

from training.tasks.checker import StepCheck, check_solution
from training.tasks.gsm8k import GSM8KLoad, load_gsm8k, load_gsm8k_hub, read_gsm8k
from training.tasks.splits import Splits, canonical_question, make_splits, split_problems
from training.tasks.synthetic import generate_problem, generate_problems
from training.tasks.types import (
    PRESETS,
    Operation,
    Problem,
    TaskConfig,
    load_problems,
    save_problems,
)

__all__ = [
    "PRESETS",
    "GSM8KLoad",
    "Operation",
    "Problem",
    "Splits",
    "StepCheck",
    "TaskConfig",
    "canonical_question",
    "check_solution",
    "generate_problem",
    "generate_problems",
    "load_gsm8k",
    "load_gsm8k_hub",
    "load_problems",
    "make_splits",
    "read_gsm8k",
    "save_problems",
    "split_problems",
]
