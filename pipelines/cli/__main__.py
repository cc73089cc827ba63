"""`python -m pipelines.cli`: the same as the `gan-pipeline` script."""

import sys

from pipelines.cli import main

sys.exit(main())
