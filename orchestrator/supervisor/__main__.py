"""``python -m orchestrator.supervisor``: the project supervisor's unit runs this."""

import sys

from .service import main

main(sys.argv[1:])
