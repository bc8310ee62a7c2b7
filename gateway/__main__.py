"""``python -m gateway`` is ``heat-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())
