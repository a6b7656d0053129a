"""`qlab --help` without click: the top-level help click last rendered, while it cannot be stale.

Importing click is most of what `qlab --help` cost. Whenever click renders the
top-level help (quantlab.cli), the text is kept under the user's cache
directory together with what it was made from: the file of every module the
rendering process had loaded (click's, quantlab's, the standard library's),
each stamped with its inode, size, mtime and ctime; sys.path and a stamp of
each of its entries (a package installed or removed there changes it); the
interpreter's version; the locale variables gettext reads (click translates
its headings); and the terminal's columns, one file per column count. The next
`qlab --help` prints that text only when all of it is still the same, so any
edit, install or upgrade sends it back to click (this file is among those
stamped: a change to the cache's layout is one too).

This module runs before anything else in `qlab` and imports nothing: os, sys
and time are loaded with the interpreter. Every failure to read or write the
cache means click answers, as it would without one.
"""

from __future__ import annotations

import os
import sys
import time

#: Before click and the commands are imported (quantlab.entry imports this module first): a file
#: changed after this may not be the one this process ran, so its help is not kept.
STARTED_NS = time.time_ns()
#: File times come from the kernel's coarse clock, which runs up to a tick behind time.time_ns().
CLOCK_SLACK_NS = 50_000_000

#: The help option's names (cli.py gives them to click): only these are worth a look at the cache;
#: which of them the group accepted is recorded with the text.
HELP_OPTIONS = ("-h", "--help")
#: The group's own options (cli.py), each taking a plain string: click prints the help before it
#: looks at any of them, so `qlab --home DIR --help` is the same help.
GROUP_OPTIONS = ("--home", "--store", "--config", "--host")
COMPLETE_VAR = "_QLAB_COMPLETE"  #: set, click answers shell completion instead
LOCALE_VARS = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def show(argv: list[str]) -> int | None:
    """For ``qlab [--home DIR ...] --help``: print the kept help and return the exit code; None: click must answer."""
    option = help_asked(argv)
    if option is None or COMPLETE_VAR in os.environ or sys.stdout is None:
        return None
    try:
        text = _kept(option)
    except Exception:  # only ever a shortcut: whatever is wrong with the cache, click answers
        return None
    if text is None:
        return None
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # As click does when the reader has gone: exit 1, and send what is still buffered
        # to /dev/null so that the interpreter's last flush does not report it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def help_asked(argv: list[str]) -> str | None:
    """The help option of ``qlab [GROUP OPTION VALUE]... --help``; None for any other command line."""
    if not argv or argv[-1] not in HELP_OPTIONS:
        return None
    words = iter(argv[:-1])
    for word in words:
        name, equals, _ = word.partition("=")
        if name not in GROUP_OPTIONS or (not equals and next(words, None) is None):
            return None
    return argv[-1]


def store(text: str, width: int, options: list[str]) -> None:
    """Keep the top-level help click just rendered ``width`` wide, accepting the help option ``options``."""
    columns = terminal_columns()
    # Only text at click's default width for these columns (not CliRunner's forced 80, say),
    # and plain ASCII, which every stream prints as click.echo would (no styles to strip).
    if width != max(min(columns, 80) - 2, 50) or not text.isascii() or "\x1b" in text:
        return
    try:
        _keep(text, columns, options)
    except Exception:  # never at the expense of the help itself: click answers next time too
        pass


def _kept(option: str) -> str | None:
    """The kept help, if nothing it was made from has changed and its group takes ``option``."""
    columns = terminal_columns()
    with open(cache_file(columns), encoding="utf-8") as f:
        options, files, stamps, text = f.read().split("\0", 3)
    if option in options.split(" ") and stamps == _stamps(columns, files.split("\n")):
        return text
    return None


def _keep(text: str, columns: int, options: list[str]) -> None:
    from types import ModuleType

    # A lazy module that was never used is not a plain module, and reading its __file__ would run it.
    files = sorted({file for m in list(sys.modules.values())
                    if type(m) is ModuleType and isinstance(file := getattr(m, "__file__", None), str)})
    stamps = _stamps(columns, files)
    # Checked after the stamps were taken: a later change is one the stamps do not match.
    if any(_changed_since(file, STARTED_NS - CLOCK_SLACK_NS) for file in files):
        return
    path = cache_file(columns)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write("\0".join([" ".join(options), "\n".join(files), stamps, text]))
        os.replace(temporary, path)  # a reader sees the old file or the new one, never half of one
    finally:
        if os.path.lexists(temporary):  # a write that failed half-way
            os.unlink(temporary)


def terminal_columns() -> int:
    """The columns shutil.get_terminal_size() gives click, read the same way: $COLUMNS, stdout's terminal, 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        columns = os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0
    except (ValueError, OSError):  # not a terminal, or closed
        columns = 0
    return columns or 80


def cache_file(columns: int) -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "quantlab", f"help-{columns}")


def _stamps(columns: int, files: list[str]) -> str:
    """Everything the text was made from besides its own fields, as one string to compare."""
    return "\n".join([sys.version, str(columns), *(os.environ.get(name, "") for name in LOCALE_VARS),
                      *(f"{path} {_stamp(path)}" for path in (*map(os.path.abspath, sys.path), *files))])


def _stamp(path: str) -> str:
    """What any write, replacement or utime of ``path`` changes."""
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def _changed_since(path: str, ns: int) -> bool:
    try:
        return os.stat(path).st_ctime_ns > ns
    except OSError:
        return False
