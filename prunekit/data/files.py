"""Where dataset files live, how they are checked, and how they are fetched.

Search order for a dataset's files (``<root>/<dataset>/<file>``):

1. ``data_dir`` when a caller passes one (then nothing else is searched);
2. ``$PRUNEKIT_DATA``;
3. the cache, ``$XDG_CACHE_HOME/prunekit/data`` (default ``~/.cache/prunekit/data``).

A missing file is downloaded into the *first* directory of that list: from its official location, into a
temporary file beside the target, verified, then renamed into place, so a failed or corrupt download never leaves
a file behind. Offline (or with ``download=False``) one :class:`DataError` says which file to put where.

Checksums are taken from where the data's authors publish them. Where they publish the checksum of the
*decompressed* content (MNIST) it is checked on the decompressed bytes, so a re-gzipped copy is accepted; where
only the checksum of the file as distributed is published (Fashion-MNIST ``.gz``, the CIFAR-10 archive) that is
what is checked.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)

ENV_VAR = "PRUNEKIT_DATA"
_CHUNK = 1 << 20


class DataError(PrunekitError):
    """A dataset file is missing, cannot be downloaded, fails its checksum, or is malformed."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: its name in ``<root>/<dataset>/``, its official URLs and its published checksum.

    ``checksum_of="content"``: the md5 is of the decompressed bytes (``.gz`` files are gunzipped first);
    ``"file"``: of the file exactly as distributed. ``md5=None`` means no official checksum exists; the loader
    then validates the structure of the data only.
    """

    name: str
    urls: tuple[str, ...]
    md5: str | None
    checksum_of: Literal["content", "file"] = "content"
    source: str = ""

    def describe_checksum(self) -> str:
        what = "decompressed content" if self.checksum_of == "content" and self.name.endswith(".gz") else "file"
        return f"md5 of the {what} {self.md5}" + (f" ({self.source})" if self.source else "")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/prunekit/data``, or ``~/.cache/prunekit/data``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunekit" / "data"


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Roots searched in order (see the module docstring); downloads go into the first."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(cache_dir())
    return dirs


def find(dataset: str, names: Sequence[str], data_dir: str | Path | None = None) -> Path | None:
    """The first existing ``<root>/<dataset>/<name>`` over the search roots (roots outer, names inner)."""
    for root in search_dirs(data_dir):
        for name in names:
            p = root / dataset / name
            if p.exists():
                return p
    return None


def missing_message(dataset: str, what: str, url: str | None, data_dir: str | Path | None, reason: str = "") -> str:
    """One message: which file, which directory, how to point prunekit elsewhere."""
    target = search_dirs(data_dir)[0] / dataset
    if data_dir is not None:
        where = f"put it in {target}/"
    elif os.environ.get(ENV_VAR):
        where = f"put it in {target}/ (under ${ENV_VAR}), or point {ENV_VAR} at a directory that holds {dataset}/"
    else:
        where = f"put it in {target}/ (the cache), or set {ENV_VAR} to a directory that holds {dataset}/"
    src = f"; official download: {url}" if url else ""
    why = f" (download failed: {reason})" if reason else ""
    return f"{dataset}: missing {what}{why}; {where}{src}"


def file_md5(path: Path, decompress: bool = False) -> str:
    """md5 of a file, or of its gunzipped content with ``decompress``; streamed, constant memory."""
    h = hashlib.md5(usedforsecurity=False)
    opener = gzip.open if decompress else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({e})") from None
    return h.hexdigest()


def verify(path: Path, spec: FileSpec, *, downloaded: bool = False) -> None:
    """Raise :class:`DataError` unless ``path`` matches ``spec``'s published checksum (no-op if there is none)."""
    if spec.md5 is None:
        return
    got = file_md5(path, decompress=spec.checksum_of == "content" and spec.name.endswith(".gz"))
    if got != spec.md5:
        fix = "the download is corrupt or was altered" if downloaded else "delete or replace it with the official file"
        raise DataError(f"{path}: checksum mismatch: got md5 {got}, expected {spec.describe_checksum()}; {fix}")


def read_content(path: Path, spec: FileSpec) -> bytes:
    """The file's content (gunzipped for ``.gz``), after checking the published checksum."""
    verify(path, spec)
    try:
        if spec.name.endswith(".gz") and not spec.name.endswith(".tar.gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _download(url: str, target: Path, spec: FileSpec) -> None:
    """Stream ``url`` into a temporary file beside ``target``, verify it, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
        verify(tmp, spec, downloaded=True)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def require(
    dataset: str, spec: FileSpec, data_dir: str | Path | None = None, download: bool = True, what: str | None = None
) -> Path:
    """Path of ``spec``'s file: found in the search roots, or downloaded into the first one.

    ``what`` replaces the file name in the missing-file message (e.g. to list accepted alternatives).
    """
    found = find(dataset, [spec.name], data_dir)
    if found is not None:
        return found
    url = spec.urls[0] if spec.urls else None
    if not download or not spec.urls:
        raise DataError(missing_message(dataset, what or spec.name, url, data_dir))
    target = search_dirs(data_dir)[0] / dataset / spec.name
    errors = []
    for u in spec.urls:
        log.info("downloading %s to %s", u, target)
        try:
            _download(u, target, spec)
            return target
        except DataError as e:  # checksum mismatch: try the next mirror, report if none is good
            errors.append(str(e))
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{u}: {getattr(e, 'reason', None) or e}")
    raise DataError(missing_message(dataset, what or spec.name, url, data_dir, reason="; ".join(errors)))
