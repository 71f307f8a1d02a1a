"""A method and a network for mtrl, declared in this package's entry points."""

from mtrl_plugin_example.method import CosineSoftmax
from mtrl_plugin_example.network import TaskGatedMLP

__all__ = ["CosineSoftmax", "TaskGatedMLP"]
