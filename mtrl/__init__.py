"""mtrl: multi-task soft actor-critic on Meta-World with gradient deconfliction."""

__version__ = "0.1.0"
