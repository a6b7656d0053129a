"""Private folders and durable files: the few filesystem calls every process writes through.

Below the store and the processes alike: the file store commits its records with them, and
the worker, the logs and ``qlab up`` make their private folders with them.

What root makes in a folder another user owns becomes that user's (``adopt``): an operator's
``sudo qlab halt`` in a service's home must not leave a record, or a folder, that the service
(running as the home's owner) can no longer replace.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from pathlib import Path
from typing import Callable


def private_dir(path: Path) -> None:
    """``mkdir -p`` with every folder it creates 0700, whatever the umask (parents too)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask
        adopt(folder)


#: What mkdir and chmod fail with on a home the user cannot write (a read-only mount, a folder not theirs).
READ_ONLY_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM)


def private_dir_if_writable(path: Path) -> bool:
    """``private_dir``, or False when the home cannot be written: readers then take it as it is.

    A folder that is not there has nothing in it for a reader; a write into it fails with its
    own error (``Read-only file system``) when it is made.
    """
    try:
        private_dir(path)
    except OSError as e:
        if e.errno in READ_ONLY_ERRORS:
            return False
        raise
    return True


def adopt(path: Path | str, fd: int | None = None) -> None:
    """As root, give ``path`` (open as ``fd``, if given) to the owner of its folder when that is another user.

    Only root's writes need it: anyone else's files are theirs, in a folder they may write.
    """
    if os.geteuid() != 0:
        return
    folder = os.stat(os.path.dirname(path) or ".")
    if folder.st_uid == 0:
        return
    if fd is None:
        if os.lstat(path).st_uid != folder.st_uid:
            os.chown(path, folder.st_uid, folder.st_gid, follow_symlinks=False)
    elif os.fstat(fd).st_uid != folder.st_uid:
        os.fchown(fd, folder.st_uid, folder.st_gid)


def open_adopted(path: Path | str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of a file in the store or the logs, the file given to its folder's owner (``adopt``)."""
    fd = os.open(path, flags, mode)
    if flags & os.O_CREAT:
        try:
            adopt(path, fd)
        except BaseException:
            os.close(fd)
            raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a short write (a full disk) raises, never truncates."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"write returned {written}")
        view = view[written:]


def write_durable(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Create ``path`` (which must not exist) with every byte of ``data``, fsynced; no file on error.

    ``sync`` False: the caller syncs the filesystem after a batch of them (sync_filesystem).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        adopt(path, fd)
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Make every write on the filesystem holding ``path`` durable with one call: syncfs(2).

    One call for a batch of files and their directories, where each would need an fsync of
    its own (the worker's group commit of states). Without syncfs, sync(2) does the same for
    every filesystem.
    """
    syncfs = _syncfs()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    import ctypes  # only the processes that group-commit need it

    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
