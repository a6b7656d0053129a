"""The `qlab` command: ``qlab --help`` from its cache when it is still current, anything else through click.

Nothing here or in quantlab.helpcache imports click or the commands, so a
``qlab --help`` the cache answers runs little more than the interpreter's own
start.
"""

from __future__ import annotations

import sys

from quantlab import helpcache


def main() -> None:
    code = helpcache.show(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from quantlab import cli

    cli.main()
