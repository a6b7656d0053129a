"""Strategies in JavaScript: Node, the installed runtime, checking a file, the child's command.

A ``.js`` or ``.mjs`` strategy runs in a Node child: ``quantlab/child/js/runner.mjs``
speaks the channel protocol of the Python runner. The zygote forks the child as
it forks a Python one (own process group, re-parented to the worker, parent-death
signal, output into the strategy's log, the scrubbed environment) and then execs
Node, so the supervision is the same; only the interpreter differs.

The runner needs two npm packages (``zeromq``, ``@msgpack/msgpack``), installed
once by `qlab js install` (``npm ci`` from the committed lock file) into the
package's js directory, or under the user's data directory when the package is
not writable. Nothing is fetched at run time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from quantlab.child import is_js
from quantlab.errors import JsRuntimeError, StrategyFileError

PACKAGE_DIR = Path(__file__).parent / "js"
RUNNER = PACKAGE_DIR / "runner.mjs"
MIN_NODE_MAJOR = 20
#: Seconds `node runner.mjs check` may take to load a strategy module (its top level runs).
CHECK_TIMEOUT = 20.0
#: Seconds `npm ci` may take.
INSTALL_TIMEOUT = 600.0
INSTALL = "run `qlab js install`"


def home_runtime_dir() -> Path:
    """Where `qlab js install` puts the packages when the package directory is read-only."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "quantlab" / "js"


def _dependencies() -> list[str]:
    manifest = json.loads((PACKAGE_DIR / "package.json").read_text())
    return sorted(manifest["dependencies"])


def _installed(directory: Path) -> bool:
    return all((directory / "node_modules" / name / "package.json").is_file() for name in _dependencies())


def runtime_dir() -> Path:
    """The directory whose node_modules the runner loads; JsRuntimeError when none is installed."""
    for directory in (PACKAGE_DIR, home_runtime_dir()):
        if _installed(directory):
            return directory
    raise JsRuntimeError(f"the JavaScript runtime is not installed: {INSTALL}")


def node() -> str:
    """The ``node`` on PATH; JsRuntimeError when there is none."""
    found = shutil.which("node")
    if found is None:
        raise JsRuntimeError(f"node not found on PATH: JavaScript strategies need Node {MIN_NODE_MAJOR} or newer")
    return found


@functools.cache
def check_node(path: str) -> str:
    """``path``'s version when it is Node 20 or newer; JsRuntimeError otherwise."""
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JsRuntimeError(f"cannot run {path}: {e}") from e
    match = re.fullmatch(r"v(\d+)\..*", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise JsRuntimeError(f"{path} is Node {version or '?'}: JavaScript strategies need Node {MIN_NODE_MAJOR} or newer")
    return version


def child_command(file: str, endpoint: str) -> list[str]:
    """What the strategy child execs: the Node runner for a JavaScript file, nothing ([]) for Python.

    Its token is not here (another process may read a command line): the zygote hands it
    over on the child's stdin (quantlab/worker/zygote.py).
    """
    if not is_js(file):
        return []
    return [node(), str(RUNNER), "child", endpoint, str(runtime_dir())]


def check_file(path: Path) -> list[str]:
    """Load the module as the child would (Node found, runtime installed, hooks exported); its ACCOUNTS export."""
    return _check(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check(path: str, mtime_ns: int) -> list[str]:
    """Cached by modification time: assign checks the file, then reads its ACCOUNTS."""
    program = node()
    check_node(program)
    runtime_dir()
    try:
        done = subprocess.run([program, str(RUNNER), "check", path], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT, stdin=subprocess.DEVNULL, env=_check_environment())
    except subprocess.TimeoutExpired as e:
        raise StrategyFileError(f"{path}: loading it took over {CHECK_TIMEOUT:g}s") from e
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise StrategyFileError(said[-1] if said else f"{path}: node exited with {done.returncode}")
    accounts: list[str] = json.loads(done.stdout.strip().splitlines()[-1])["accounts"]
    return accounts


#: What the check's Node process may see of the operator's environment: the module's top level
#: runs there, and the operator's shell may hold exchange secrets the worker would have stripped.
CHECK_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def _check_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in CHECK_ENVIRONMENT if name in os.environ}


def install() -> Path:
    """`npm ci` the runner's packages from the lock file; the directory they went to."""
    check_node(node())
    npm = shutil.which("npm")
    if npm is None:
        raise JsRuntimeError("npm not found on PATH: it comes with Node")
    target = PACKAGE_DIR if os.access(PACKAGE_DIR, os.W_OK) else home_runtime_dir()
    if target != PACKAGE_DIR:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PACKAGE_DIR / name, target / name)
    # --ignore-scripts: zeromq ships prebuilt Linux binaries; its install script would only try a build.
    command = [npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"]
    try:
        # Readable by every user, not private as qlab's own files are: public code that strategies
        # running as uids of their own (`worker start --strategy-uids`) load.
        done = subprocess.run(command, cwd=target, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              umask=0o022)
    except subprocess.TimeoutExpired as e:
        raise JsRuntimeError(f"npm ci took over {INSTALL_TIMEOUT:g}s in {target}") from e
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise JsRuntimeError(f"npm ci failed in {target}: {said[-1] if said else done.returncode}")
    (target / "node_modules").chmod(0o755)  # npm ci keeps the folder an earlier, private install made
    return target
