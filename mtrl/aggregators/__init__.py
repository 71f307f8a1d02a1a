"""Gradient-aggregation methods: per-task gradients in, one deconflicted update out.

Each method maps the Gram matrix of the per-task gradients to task weights; see
:mod:`mtrl.aggregators.base` for the interface and :func:`aggregate` for applying one. The
methods are found by name through the entry points ``mtrl.methods``, mtrl's own as well as those
of other installed packages (:mod:`mtrl.plugins`): :func:`available` lists them and
:func:`make_aggregator` builds one.
"""

from mtrl.aggregators.aligned_mtl import AlignedMTL
from mtrl.aggregators.base import (
    Aggregation,
    Aggregator,
    NonFiniteGradientError,
    aggregate,
    available,
    make_aggregator,
    normalized_gram,
)
from mtrl.aggregators.cagrad import CAGrad
from mtrl.aggregators.cagrad_fast import FastCAGrad
from mtrl.aggregators.conicgrad import ConicGrad
from mtrl.aggregators.famo import FAMO
from mtrl.aggregators.gradops import GradOPS
from mtrl.aggregators.gradvac import GradVac
from mtrl.aggregators.imgrad import IMGrad
from mtrl.aggregators.mean import Mean
from mtrl.aggregators.mgda import MGDA
from mtrl.aggregators.nash_mtl import NashMTL
from mtrl.aggregators.pcgrad import PCGrad
from mtrl.aggregators.sdmgrad import SDMGrad, SDMGradOS

__all__ = [
    "FAMO",
    "MGDA",
    "Aggregation",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "ConicGrad",
    "FastCAGrad",
    "GradOPS",
    "GradVac",
    "IMGrad",
    "Mean",
    "NashMTL",
    "NonFiniteGradientError",
    "PCGrad",
    "SDMGrad",
    "SDMGradOS",
    "aggregate",
    "available",
    "make_aggregator",
    "normalized_gram",
]
