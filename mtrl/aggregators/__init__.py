"""Gradient-aggregation methods: per-task gradients in, one deconflicted update out.

Each method maps the Gram matrix of the per-task gradients to task weights; see
:mod:`mtrl.aggregators.base` for the interface and :func:`aggregate` for applying one.
"""

from mtrl.aggregators import cagrad, gradops, mean, pcgrad  # noqa: F401  (registers them)
from mtrl.aggregators.base import (
    Aggregation,
    Aggregator,
    NonFiniteGradientError,
    aggregate,
    available,
    check_finite,
    make_aggregator,
    normalized_gram,
    register,
)
from mtrl.aggregators.cagrad import CAGrad
from mtrl.aggregators.gradops import GradOPS
from mtrl.aggregators.mean import Mean
from mtrl.aggregators.pcgrad import PCGrad

__all__ = [
    "Aggregation",
    "Aggregator",
    "CAGrad",
    "GradOPS",
    "Mean",
    "NonFiniteGradientError",
    "PCGrad",
    "aggregate",
    "available",
    "check_finite",
    "make_aggregator",
    "normalized_gram",
    "register",
]
