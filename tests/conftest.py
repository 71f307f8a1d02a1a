import os

from hypothesis import settings

# CI draws the same examples every run (no flaky failures); local runs explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
