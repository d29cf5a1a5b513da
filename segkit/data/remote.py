"""Import sources in cloud storage: ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``https://host/folder/``.

(Prediction reads such URLs one image at a time instead, :func:`list_files` and :func:`read_bytes`,
and writes to them image by image through :func:`output_folder`, or all at the end through
:func:`staged_output`.)

The remote tree is mirrored into a staging folder inside the output folder (through fsspec, with a
progress bar), then the local converter runs on that copy, so a remote import writes what a local
import of the same files writes. A re-run downloads only files whose size changed.

- Protocol support comes from fsspec's optional packages: ``s3fs`` for ``s3://``, ``gcsfs`` for
  ``gs://``, ``aiohttp`` for ``https://`` (a folder URL ends with ``/`` and needs a server that lists
  the folder as HTML links, as most static file servers do).
- Credentials come from each cloud's usual chain, never from us: AWS env variables /
  ``~/.aws`` / instance roles (``AWS_ENDPOINT_URL_S3`` points at MinIO or another S3-compatible
  server), Google's application-default credentials. URLs are shown without user info or query
  string (signed URLs carry tokens there).
"""

import contextlib
import os
import re
import sys
import tempfile
from urllib.parse import urlsplit, urlunsplit

STAGING_DIR = ".remote-source"  # inside the output folder
_LOCAL_PROTOCOLS = ("file", "local")
# "scheme://user:pw@host/path?query#frag" -> "scheme://host/path"
_URL_SECRETS = re.compile(r"([a-z][a-z0-9+.-]*://)(?:[^\s/@]*@)?([^\s?#\"']*)(?:[?#][^\s\"']*)?", re.I)


class RemoteSourceError(Exception):
    """A remote source that cannot be read; the message is one line ``URL: reason``."""


def is_remote(src):
    """True for URLs (``s3://``, ``gs://``, ``https://``, ...) other than ``file://``."""
    src = os.fspath(src)
    return "://" in src and src.split("://", 1)[0].lower() not in _LOCAL_PROTOCOLS


def redact(url):
    """``url`` without user info, query string or fragment: safe to print and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _reason(error):
    if isinstance(error, FileNotFoundError):
        return "not found (no such bucket, prefix or file)"
    if isinstance(error, PermissionError):
        return "access denied (check the credentials of this cloud's usual environment/config)"
    if isinstance(error, ImportError):
        return f"this protocol needs an optional package: {error.name or error}"
    if isinstance(error, ValueError) and "Protocol not known" in str(error):
        return str(error)
    text = str(error).splitlines()[0] if str(error) else ""
    text = _URL_SECRETS.sub(r"\1\2", text)  # backends quote URLs, signed ones carry tokens
    return f"cannot be read ({type(error).__name__}{': ' + text if text else ''})"


def _mirror_paths(fs, root, staging):
    """({remote path: (local path, size)} of every file under ``root``, whether ``root`` is one file)."""
    # A web server answers a folder URL with an HTML listing, a "file": only a trailing "/" tells.
    web = fs.protocol in ("http", "https") or "http" in tuple(fs.protocol)
    if (not root.endswith("/")) if web else fs.isfile(root):
        return {root: (os.path.join(staging, os.path.basename(root.rstrip("/"))), fs.size(root))}, True
    found = fs.find(root, detail=True)
    if not found:
        raise FileNotFoundError(root)
    base = root.rstrip("/") + "/"
    mirror = {}
    for path, info in sorted(found.items()):
        if info.get("type", "file") != "file" or not path.startswith(base):
            continue
        rel = path[len(base):]
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts) or parts[0].startswith("."):
            continue  # nothing may land outside the staging folder; hidden folders skipped
        mirror[path] = (os.path.join(staging, *parts), info.get("size"))
    return mirror, False


def materialise(src, output_dir, progress=True):
    """Download the remote ``src`` into ``output_dir``/.remote-source (mirroring its tree) and
    return that local folder (or the local file when ``src`` is a file). Raises
    :class:`RemoteSourceError` with one line ``URL: reason``."""
    import fsspec
    from fsspec.callbacks import TqdmCallback

    shown = redact(src)
    staging = os.path.abspath(os.path.join(output_dir, STAGING_DIR))
    try:
        fs, root = fsspec.core.url_to_fs(src)
        mirror, single_file = _mirror_paths(fs, root, staging)
        todo = [(r, local) for r, (local, size) in mirror.items()
                if not (os.path.isfile(local) and size is not None and os.path.getsize(local) == size)]
        for _, local in todo:
            os.makedirs(os.path.dirname(local), exist_ok=True)
        if todo:
            callback = TqdmCallback(tqdm_kwargs={"desc": f"downloading {shown}", "unit": "file",
                                                 "file": sys.stderr, "disable": not progress})
            fs.get([r for r, _ in todo], [local for _, local in todo], callback=callback)
    except Exception as e:  # every backend raises its own types; the user needs one line
        raise RemoteSourceError(f"{shown}: {_reason(e)}") from None
    return next(iter(mirror.values()))[0] if single_file else staging


def list_files(url, extensions):
    """Sorted URLs of the files under ``url`` (or ``url`` itself, a file) whose extension is in
    ``extensions``, found by listing, nothing downloaded. Raises :class:`RemoteSourceError`."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        protocol = url.split("://", 1)[0]
        if fs.isfile(root):
            return [url]
        found = sorted(p for p in fs.find(root) if os.path.splitext(p)[1].lower() in extensions
                       and not any(part.startswith(".") for part in p[len(root.rstrip("/")):].split("/")))
    except Exception as e:  # every backend raises its own types; the user needs one line
        raise RemoteSourceError(f"{redact(url)}: {_reason(e)}") from None
    if not found and not fs.exists(root):
        raise RemoteSourceError(f"{redact(url)}: {_reason(FileNotFoundError(root))}")
    return [f"{protocol}://{p}" for p in found]


def read_bytes(url):
    """The content of one remote file, streamed into memory (no copy on disk). Raises
    :class:`RemoteSourceError`."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except Exception as e:
        raise RemoteSourceError(f"{redact(url)}: {_reason(e)}") from None


@contextlib.contextmanager
def staged_output(output):
    """``with staged_output(dest) as folder:`` write into ``folder``; a remote ``dest`` gets a local
    temporary folder whose files are uploaded when the block ends without an error (and then
    removed). A local ``dest`` is used as it is."""
    if not is_remote(output):
        yield output
        return
    import fsspec

    with tempfile.TemporaryDirectory(prefix="segkit-upload-") as local:
        yield local
        try:
            fs, root = fsspec.core.url_to_fs(output)
            files = [os.path.join(d, f) for d, _, names in os.walk(local) for f in names]
            remote = [root.rstrip("/") + "/" + os.path.relpath(p, local).replace(os.sep, "/") for p in files]
            fs.put(files, remote)
        except Exception as e:
            raise RemoteSourceError(f"{redact(output)}: upload failed, {_reason(e)}") from None
        print(f"uploaded {len(files)} file(s) to {redact(output)}", file=sys.stderr)


def _literal(path):
    """fsspec expands glob characters in a list of paths: such names go one at a time."""
    from glob import has_magic  # fsspec's test

    return not has_magic(path)


class LocalOutput:
    """An output folder on this machine, written in place; the interface of :class:`RemoteOutput`
    (paths relative to the folder, "/"-separated)."""

    def __init__(self, folder):
        self.local = self.shown = folder

    def _path(self, rel):
        return os.path.join(self.local, *rel.split("/"))

    def files(self, *unders):
        """Relative paths of the files below these sub-folders."""
        found = set()
        for under in unders:
            for d, _, names in os.walk(self._path(under)):
                found.update(os.path.relpath(os.path.join(d, n), self.local).replace(os.sep, "/") for n in names)
        return found

    def read(self, rels):
        """{relative path: bytes} of those of ``rels`` that can be read."""
        out = {}
        for rel in rels:
            try:
                with open(self._path(rel), "rb") as f:
                    out[rel] = f.read()
            except OSError:
                pass
        return out

    def remove(self, rels):
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._path(rel))
            if rel.count("/") > 1:  # a per-image folder (masks/<name>/) left empty goes too
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(self._path(rel)))

    def push(self, last=None):
        """Nothing to upload: the files are in place already."""


class RemoteOutput:
    """An ``s3://`` (or other fsspec) output written file by file: files are written into the local
    staging folder ``local``, and :meth:`push` uploads and then deletes them, so the local disk
    holds one image's outputs at a time and a crash loses only what was not pushed yet."""

    def __init__(self, url, local):
        import fsspec

        self.url, self.shown, self.local = url, redact(url), local
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except Exception as e:
            raise RemoteSourceError(f"{self.shown}: {_reason(e)}") from None
        self.root = root.rstrip("/")

    def _remote(self, rel):
        return f"{self.root}/{rel}"

    def _fail(self, what, error):
        return RemoteSourceError(f"{self.shown}: {what} failed, {_reason(error)}")

    def files(self, *unders):
        """Relative paths of the files below these sub-folders: one listing (of the whole output
        when several sub-folders are asked for)."""
        top = self._remote(unders[0]) if len(unders) == 1 else self.root
        try:
            found = self.fs.find(top)
        except FileNotFoundError:
            found = []
        except Exception as e:
            raise self._fail("listing", e) from None
        base = self.root + "/"
        rels = {p[len(base):] for p in found if p.startswith(base)}
        return {r for r in rels if r.split("/", 1)[0] in unders}

    def read(self, rels):
        """{relative path: bytes} of those of ``rels`` that can be read (fetched concurrently)."""
        rels = list(rels)
        try:
            data = self.fs.cat_ranges([self._remote(r) for r in rels], None, None, on_error="return")
        except Exception as e:
            raise self._fail("reading", e) from None
        return {r: d for r, d in zip(rels, data) if isinstance(d, bytes)}

    def remove(self, rels):
        paths = [self._remote(r) for r in rels]
        try:
            if any(map(_literal, paths)):
                self.fs.rm([p for p in paths if _literal(p)])
            for p in paths:
                if not _literal(p):
                    self.fs.rm_file(p)
        except FileNotFoundError:
            pass
        except Exception as e:
            raise self._fail("removing old outputs", e) from None

    def push(self, last=None):
        """Upload every file in the staging folder, those below the sub-folder ``last`` after the
        others (a record is uploaded after the outputs it stands for), then delete them here."""
        staged = sorted(os.path.join(d, f) for d, _, names in os.walk(self.local) for f in names)
        if not staged:
            return
        rel = {p: os.path.relpath(p, self.local).replace(os.sep, "/") for p in staged}
        later = [p for p in staged if last and rel[p].split("/", 1)[0] == last]
        try:
            for group in ([p for p in staged if p not in later], later):
                if group:
                    self.fs.put(group, [self._remote(rel[p]) for p in group])
        except Exception as e:
            raise self._fail("upload", e) from None
        for p in staged:
            os.remove(p)
        for d, subdirs, names in os.walk(self.local, topdown=False):
            if d != self.local and not subdirs and not names:
                os.rmdir(d)


@contextlib.contextmanager
def output_folder(dest):
    """``with output_folder(dest) as out:`` a :class:`LocalOutput` for a folder, a
    :class:`RemoteOutput` staging in a temporary folder for a URL."""
    if not is_remote(dest):
        yield LocalOutput(dest)
        return
    with tempfile.TemporaryDirectory(prefix="segkit-upload-") as local:
        yield RemoteOutput(dest, local)
