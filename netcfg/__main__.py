"""The processes netcfg runs in a user's own namespace (rootless mode):

python -m netcfg agent PID:USER:NET               the link agent (``agent``)
python -m netcfg enter PID:USER:NET -- PROGRAM..  a program in it, e.g. dnsmasq (``userns``)
"""

from __future__ import annotations

import sys

from . import agent, keeper, userns


def main(argv: list[str]) -> int:
    match argv[:1]:
        case ["agent"]:
            return agent.main(argv[1:])
        case ["enter"]:
            return userns.main(argv[1:])
        case ["keeper"]:
            return keeper.main(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
