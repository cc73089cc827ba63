"""Python imports this at start-up when tests/faults is on PYTHONPATH: the test-only fault
hooks (gan_faults.py) go into every process a fault test starts."""

import faulthandler
import signal

import gan_faults

gan_faults.install()
# A test whose process does not end in time sends SIGUSR1 for every thread's stack on
# stderr (tests/test_faults.py: finish): what a hang was waiting on, not just that it hung
faulthandler.register(signal.SIGUSR1, all_threads=True)
