"""Python imports this at start-up when tests/faults is on PYTHONPATH: the test-only fault
hooks (gan_faults.py) go into every process a fault test starts."""

import gan_faults

gan_faults.install()
