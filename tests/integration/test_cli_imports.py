"""A command loads only what it uses: what `qlab --help` and `qlab status --json` import.

Each case runs `qlab`'s entry point in a fresh interpreter started without ``site`` (the
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
    "from quantlab.entry import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    # a LazyLoader module keeps its placeholder class until its first attribute is read
    "loaded = sorted(n for n, m in sys.modules.items() if m is not None and type(m).__name__ != '_LazyModule')\n"
    "print('MODULES', code, ' '.join(loaded))\n"
)
#: The interpreter's own modules, to compare with (site, left out here, imports os at every start).
BARE = "import os, sys\nprint('MODULES', 0, ' '.join(sorted(sys.modules)))\n"

#: Never needed to list commands or print the store: the daemons', the exchange's and the drawing's.
HEAVY = ("rich", "psutil", "pybit", "requests", "zmq", "prometheus_client", "psycopg", "filelock",
         "quantlab.worker", "quantlab.child", "quantlab.ops", "quantlab.director.loop", "quantlab.store.pgstore")
#: Standard modules only some commands use: settings files, host names, `events --json`, assign's file
#: check, `worker stop`, the worker's pruner thread, the risk checks of orders.
DEFERRED = ("tomllib", "socket", "json", "subprocess", "signal", "queue", "quantlab.exchange.risk")
#: `--help` runs no command: no home, no records, no store, no msgspec.
NOT_FOR_HELP = ("pathlib", "msgspec", "quantlab.config", "quantlab.settings", "quantlab.control", "quantlab.fleet",
                "quantlab.strategylogs", "quantlab.workerstop", "quantlab.killswitch", "quantlab.views",
                "quantlab.store", "quantlab.exchange")


def _run(tmp: Path, *args: str, probe: str = PROBE) -> tuple[str, set[str]]:
    """What the probe printed before its module list, and the list; the help cache is under ``tmp``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *site.getsitepackages()]),
           "XDG_CACHE_HOME": str(tmp / "cache")}
    env.pop("COLUMNS", None)
    # The working directory is on sys.path (-c), so the cache's key stamps it: an idle one.
    (tmp / "cwd").mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-S", "-c", probe, *args], capture_output=True, text=True, check=True,
                         env=env, cwd=tmp / "cwd").stdout
    printed, _, last = out.rpartition("MODULES ")
    line = last.split()
    assert line[0] == "0", out
    return printed, set(line[1:])


def _loaded(tmp: Path, *args: str) -> set[str]:
    return _run(tmp, *args)[1]


def _under(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_help_imports_click_and_nothing_it_does_not_print(lab: Lab, tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, "--home", str(lab.home), "--help")  # the cache is empty: click renders it
    assert "click" in loaded
    assert _under(loaded, HEAVY + DEFERRED + NOT_FOR_HELP) == []


def test_help_from_the_cache_imports_neither_click_nor_the_commands(tmp_path: Path) -> None:
    printed_by_click, loaded = _run(tmp_path, "--help")
    assert {"click", "quantlab.cli"} <= loaded  # no cache yet: click rendered it, and it was kept
    printed, loaded = _run(tmp_path, "--help")
    assert printed == printed_by_click
    bare = _run(tmp_path, probe=BARE)[1]
    # __future__: the annotations import quantlab's modules begin with
    assert loaded - bare == {"__future__", "quantlab", "quantlab.errors", "quantlab.entry", "quantlab.helpcache"}


def test_status_json_reads_the_store_without_the_daemons_or_the_drawing(lab: Lab, tmp_path: Path) -> None:
    lab.assign(lab.strategy("s", "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, r): pass\n"))
    loaded = _loaded(tmp_path, "--home", str(lab.home), "status", "--json")
    assert {"msgspec", "quantlab.fleet", "quantlab.store.filestore"} <= loaded  # it did read the store
    assert _under(loaded, HEAVY + DEFERRED) == []
    assert "quantlab.cli_status" in loaded and _under(loaded, ("quantlab.cli_halt", "quantlab.cli_admin")) == []


#: What a strategy's hooks are checked with when its file is Python: ast, never Node.
NODE = ("quantlab.child.jsruntime", "subprocess", "json")


def test_assign_checks_a_python_file_without_node_or_the_daemons(lab: Lab, tmp_path: Path) -> None:
    file = lab.strategy("s", "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, r): pass\n")
    printed, loaded = _run(tmp_path, "--home", str(lab.home), "strategy", "assign", str(file))
    assert printed.startswith("submitted s:")
    assert "quantlab.child.loader" in loaded  # it did check the file
    not_for_assign = tuple(name for name in HEAVY if name != "quantlab.child")
    assert _under(loaded, not_for_assign + DEFERRED + NODE + ("quantlab.views", "quantlab.fleet")) == []


def test_status_draws_its_tables_without_emoji_codes_or_openssl(lab: Lab, tmp_path: Path) -> None:
    lab.assign(lab.strategy("s", "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, r): pass\n"))
    printed, loaded = _run(tmp_path, "--home", str(lab.home), "status")
    assert "strategies" in printed and "rich.table" in loaded  # it did draw the table
    not_for_status = tuple(name for name in HEAVY if name != "rich")
    assert _under(loaded, not_for_status + DEFERRED + ("rich._emoji_codes", "hashlib", "_hashlib")) == []
