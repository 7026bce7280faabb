# Loaded at interpreter start-up when tests put this folder on PYTHONPATH: plants the bug named by
# XV_PLANTED_BUG into a worker, so negative controls run the real worker with one thing broken.
import os

if os.environ.get("XV_PLANTED_BUG"):
    from tests.planted import bugs

    bugs.plant(os.environ["XV_PLANTED_BUG"])
