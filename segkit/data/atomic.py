"""Atomic file writes: a reader never sees a half-written output, and a crash leaves the old file."""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path, text: str):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent=2):
    """Deterministic JSON (sorted keys not imposed: callers control key order for readability)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def place_file(src, dest, mode="copy"):
    """Copy (``mode`` "copy", byte for byte) or symlink (``mode`` "symlink") ``src`` to ``dest``
    atomically; nothing is done when ``dest`` is already that copy (same size and mtime) or link."""
    src = os.path.realpath(src)
    if mode == "symlink":
        if os.path.islink(dest) and os.readlink(dest) == src:
            return
        with atomic_path(dest) as tmp:
            os.remove(tmp)
            os.symlink(src, tmp)
        return
    s = os.stat(src)
    if os.path.isfile(dest) and not os.path.islink(dest):
        d = os.stat(dest)
        if s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
            return
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)  # not the source's mode (often read-only) nor mkstemp's 0600
        os.utime(tmp, ns=(s.st_atime_ns, s.st_mtime_ns))  # lets a re-run skip unchanged images


def add_place_mode_options(parser):
    """``--copy`` (default) / ``--symlink``: the ``mode`` of :func:`place_file`, as ``args.mode``."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy images (default)")
    g.add_argument("--symlink", dest="mode", action="store_const", const="symlink",
                   help="symlink images instead of copying")
    parser.set_defaults(mode="copy")
