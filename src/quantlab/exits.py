"""How a `qlab` process ends: named exit codes, and one ``Error: ...`` line instead of a traceback.

Shared by the command line and the daemons it becomes (quantlab/daemon.py), so
both end the same way whatever goes wrong.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from quantlab.errors import QuantlabError

EXIT_OK = 0
EXIT_ERROR = 1  #: a QuantlabError: bad input, unknown id, a conflict
EXIT_INTERRUPTED = 130  #: Ctrl-C, as a shell reports SIGINT


def error(message: str) -> None:
    # One line, whatever the message carries: scripts and people read the first line only.
    print("Error: " + " ".join(message.split("\n")), file=sys.stderr, flush=True)


def warning(message: str) -> None:
    """Something went wrong that did not fail the command (what it wrote stands): one line on stderr."""
    print("warning: " + " ".join(message.split("\n")), file=sys.stderr, flush=True)


def reported(step: Callable[[], int]) -> int:
    """``step()``'s exit code; an exception ends it with one line on stderr, never a traceback."""
    try:
        return step()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except QuantlabError as e:
        error(str(e))
        return EXIT_ERROR
    except OSError as e:  # a home that cannot be made or read, a full disk: what and where, in one line
        error(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        return EXIT_ERROR
    except Exception as e:
        if os.environ.get("QLAB_DEBUG"):
            raise
        error(f"internal error: {type(e).__name__}: {e} (set QLAB_DEBUG=1 for the traceback)")
        return EXIT_ERROR
