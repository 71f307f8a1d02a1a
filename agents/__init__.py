"""Learning algorithms (installed as :mod:`mtrl.agents`)."""
