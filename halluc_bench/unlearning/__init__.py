"""Unlearning of object hallucinations: the ``Unlearner`` API, forget/retain mining and the baselines.

Importing this package registers the built-in baselines; plug-ins such as SARE are found
through the ``halluc_bench.unlearners`` entry-point group on first lookup.
"""

from halluc_bench.unlearning.base import (
    UNLEARNERS,
    LossTerms,
    StepInputs,
    StepLog,
    StepValues,
    UnlearnResult,
    Unlearner,
    UnlearnerConfig,
    describe_methods,
    make_unlearner,
)
from halluc_bench.unlearning.lora import LoraSettings
from halluc_bench.unlearning.training import NonFiniteLossError, Reference
from halluc_bench.unlearning import methods as _methods  # noqa: F401  (registers the built-in baselines)

__all__ = [
    "UNLEARNERS",
    "LoraSettings",
    "LossTerms",
    "NonFiniteLossError",
    "Reference",
    "StepInputs",
    "StepLog",
    "StepValues",
    "UnlearnResult",
    "Unlearner",
    "UnlearnerConfig",
    "describe_methods",
    "make_unlearner",
]
