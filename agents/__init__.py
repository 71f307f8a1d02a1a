"""Learning algorithms (installed as :mod:`mtrl.agents`)."""

from mtrl.agents.mtsac import MTSAC
from mtrl.agents.policies import MTSACPolicy

__all__ = ["MTSAC", "MTSACPolicy"]
