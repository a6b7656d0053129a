"""Process titles: what `ps`, `top` and `pgrep -f` show for each quantlab process.

Without them every director and worker shows as ``python3 -m quantlab.daemon 3``
and every strategy as ``python3 -m quantlab.worker.zygote 11 PID``. The titles:
``qlab director``, ``qlab worker ID``, ``qlab zygote ID`` and
``qlab strategy ID [WORKER]``.

setproctitle is a small C extension, imported on first use: only the daemons
pay for it. The zygote sets its own title before it forks, so the module and
the copy of the environment its first call makes are pages its children share.
"""

from __future__ import annotations

from typing import Callable

#: setproctitle's function once looked up (None: not yet; a no-op without the package). A
#: strategy child finds it here, bound in its zygote: its own import statement would touch
#: shared pages (module and spec objects) and cost each child their copies.
_set: Callable[[str], None] | None = None


def set_title(title: str) -> None:
    """Show this process as ``title``; without setproctitle installed, it keeps the interpreter's command line."""
    global _set
    if _set is None:
        try:
            from setproctitle import setproctitle
        except ImportError:
            setproctitle = _keep
        _set = setproctitle
    _set(title)


def _keep(title: str) -> None:
    """Without setproctitle: the command line stays."""
