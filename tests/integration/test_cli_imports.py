"""A command loads only what it uses (issue 12): what `qlab --help` and `qlab status --json` import.

Each case runs the CLI in a fresh interpreter started without ``site`` (the
package and its dependencies on PYTHONPATH instead), so what a ``.pth`` file
loads at start-up cannot hide a module the CLI would load itself, and lists
the modules it executed (a module quantlab.lazy registered but nobody touched
does not count). No timings: a module that comes back is the regression,
whatever it costs here.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

from tests.conftest import Lab

SRC = Path(__file__).resolve().parents[2] / "src"

PROBE = (
    "import sys\n"
    "from quantlab.cli import run\n"
    "code = run(sys.argv[1:])\n"
    # a LazyLoader module keeps its placeholder class until its first attribute is read
    "loaded = sorted(n for n, m in sys.modules.items() if m is not None and type(m).__name__ != '_LazyModule')\n"
    "print('MODULES', code, ' '.join(loaded))\n"
)

#: Never needed to list commands or print the store: the daemons', the exchange's and the drawing's.
HEAVY = ("rich", "psutil", "pybit", "requests", "zmq", "prometheus_client", "psycopg", "filelock",
         "quantlab.worker", "quantlab.strategy", "quantlab.ops", "quantlab.pool.director", "quantlab.pool.pgstore")
#: Standard modules only some commands use: settings files, host names, `events --json`, assign's file
#: check, `worker stop`, the worker's pruner thread, the risk checks of orders.
DEFERRED = ("tomllib", "socket", "json", "subprocess", "signal", "queue", "quantlab.exchange.risk")
#: `--help` runs no command: no home, no records, no store, no msgspec.
NOT_FOR_HELP = ("pathlib", "msgspec", "quantlab.config", "quantlab.settings", "quantlab.control", "quantlab.views",
                "quantlab.pool", "quantlab.exchange")


def _loaded(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *site.getsitepackages()])}
    out = subprocess.run([sys.executable, "-S", "-c", PROBE, *args], capture_output=True, text=True, check=True,
                         env=env).stdout
    line = out.splitlines()[-1].split(" ")
    assert line[:2] == ["MODULES", "0"], out
    return set(line[2:])


def _under(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_help_imports_click_and_nothing_it_does_not_print(lab: Lab) -> None:
    loaded = _loaded("--home", str(lab.home), "--help")
    assert "click" in loaded
    assert _under(loaded, HEAVY + DEFERRED + NOT_FOR_HELP) == []


def test_status_json_reads_the_store_without_the_daemons_or_the_drawing(lab: Lab) -> None:
    lab.assign(lab.strategy("s", "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, r): pass\n"))
    loaded = _loaded("--home", str(lab.home), "status", "--json")
    assert {"msgspec", "quantlab.control", "quantlab.pool.filestore"} <= loaded  # it did read the store
    assert _under(loaded, HEAVY + DEFERRED) == []
