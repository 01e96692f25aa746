"""One way to read and write local paths and ``s3://`` URIs (pyarrow filesystems).

Endpoint, region and scheme come from the caller (configuration). Credentials are never passed
here: pyarrow's S3 client takes them from the standard AWS chain (environment, profile, instance
identity), so they never enter configs, manifests or logs.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import posixpath
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import DataError, StorageError

log = logging.getLogger(__name__)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'. A part cannot climb out of ``uri``:
    '..' components (e.g. in a query-set name or a run id) are refused."""
    out = uri.rstrip("/")
    for p in parts:
        if ".." in p.split("/"):
            raise DataError(f"path part {p!r} would leave {uri}: '..' is not allowed")
        out = posixpath.join(out, p.strip("/"))
    return out


# Failures worth another try: the network, throttling, a server restarting. Others (not found,
# access denied, a bad request) fail at once.
TRANSIENT = ("NETWORK_CONNECTION", "curlCode", "Couldn't connect", "Connection refused", "Connection reset",
             "SERVICE_UNAVAILABLE", "SLOW_DOWN", "INTERNAL_FAILURE", "REQUEST_TIMEOUT", "Timeout", "timed out",
             "Broken pipe", "HTTP response code 500", "HTTP response code 502", "HTTP response code 503",
             "HTTP response code 504")


def is_transient(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and any(m in str(e) for m in TRANSIENT)


@dataclass(frozen=True)
class Storage:
    """Resolves URIs to pyarrow filesystems. ``endpoint_url`` like ``http://127.0.0.1:5000``.

    Every S3 call that fails for a transient reason is tried up to ``attempts`` times, waiting
    ``backoff_s``, then twice that, and so on; then it fails with a one-line ``StorageError``."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    attempts: int = 6
    backoff_s: float = 0.5

    def settings(self) -> dict:
        """What rebuilds this Storage in another process (a Ray task or actor)."""
        return dataclasses.asdict(self)

    def _retry(self, uri: str, what: str, fn):
        if not is_s3(uri):
            return fn()
        delay, waited = self.backoff_s, 0.0
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except OSError as e:
                if not is_transient(e):
                    raise
                if attempt == self.attempts:
                    raise StorageError(f"{uri}: {what} failed {attempt} times over {waited:.0f} s, storage unreachable "
                                       f"({_short(e)})") from None
                log.warning("%s: %s failed (%s); try %d of %d in %.1f s", uri, what, _short(e), attempt + 1,
                            self.attempts, delay)
                time.sleep(delay)
                waited += delay
                delay *= 2

    # -- resolution -----------------------------------------------------------------------
    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """Return ``(filesystem, path)`` for a local path or ``s3://bucket/key`` URI."""
        if is_s3(uri):
            return self.s3_filesystem(), uri[len("s3://") :].rstrip("/")
        if "://" in uri and not uri.startswith("file://"):
            raise DataError(f"{uri}: unsupported scheme (use a local path or s3://bucket/prefix)")
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        import os.path

        return pafs.LocalFileSystem(), os.path.abspath(path)

    def s3_filesystem(self) -> pafs.S3FileSystem:
        kwargs: dict = {"region": self.region, "allow_bucket_creation": True}
        if self.endpoint_url:
            scheme, _, host = self.endpoint_url.partition("://")
            if not host:
                scheme, host = "https", self.endpoint_url
            kwargs.update(endpoint_override=host, scheme=scheme)
        return pafs.S3FileSystem(**kwargs)

    # -- queries about paths ---------------------------------------------------------------
    def info(self, uri: str) -> pafs.FileInfo:
        fs, path = self.resolve(uri)
        return self._retry(uri, "stat", lambda: fs.get_file_info(path))

    def exists(self, uri: str) -> bool:
        return self.info(uri).type != pafs.FileType.NotFound

    def is_dir(self, uri: str) -> bool:
        return self.info(uri).type == pafs.FileType.Directory

    def list_files(self, uri: str, suffix: str = "") -> list[str]:
        """Files directly or recursively under ``uri`` ending in ``suffix``, sorted, as URIs."""
        fs, path = self.resolve(uri)
        if self.info(uri).type == pafs.FileType.NotFound:
            return []
        infos = self._retry(uri, "list", lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)))
        rel = sorted(
            i.path[len(path) :].lstrip("/")
            for i in infos
            if i.type == pafs.FileType.File and i.path.endswith(suffix)
        )
        return [join(uri, r) for r in rel if not posixpath.basename(r).startswith((".", "_"))]

    # -- bytes -----------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.resolve(uri)

        def read() -> bytes:
            with fs.open_input_stream(path) as f:
                return f.read()

        try:
            return self._retry(uri, "read", read)
        except FileNotFoundError:
            raise DataError(f"{uri}: file not found") from None
        except OSError as e:
            raise DataError(f"{uri}: cannot read ({_short(e)})") from None

    def read_text(self, uri: str) -> str:
        data = self.read_bytes(uri)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{uri}: not valid UTF-8 at byte {e.start}") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: a reader sees the old object/file or the whole new one."""
        fs, path = self.resolve(uri)
        parent = posixpath.dirname(path)
        if is_s3(uri):
            # An S3 PUT (or multipart completion) is atomic: no partial object is ever visible,
            # so a write that fails leaves the old object or none, and is simply tried again.
            def put() -> None:
                with fs.open_output_stream(path) as f:
                    f.write(data)

            self._retry(uri, "write", put)
            return
        fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        finally:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def delete(self, uri: str) -> None:
        fs, path = self.resolve(uri)
        info = self.info(uri)
        if info.type == pafs.FileType.Directory:
            self._retry(uri, "delete", lambda: fs.delete_dir(path))
        elif info.type == pafs.FileType.File:
            self._retry(uri, "delete", lambda: fs.delete_file(path))

    # -- tables ----------------------------------------------------------------------------
    def read_table(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        """Read one Parquet file, or every ``*.parquet`` part under a folder, as one table."""
        info = self.info(uri)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{uri}: not found")
        files = [uri] if info.type == pafs.FileType.File else self.list_files(uri, ".parquet")
        if not files:
            raise DataError(f"{uri}: folder holds no .parquet files")
        tables = []
        for f in files:
            ffs, fpath = self.resolve(f)
            try:
                tables.append(self._retry(f, "read", lambda: pq.read_table(fpath, filesystem=ffs, columns=columns)))
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"{f}: not a readable Parquet file ({_short(e)})") from None
        if len(tables) == 1:
            return tables[0]
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except pa.ArrowInvalid as e:
            raise DataError(f"{uri}: parts have incompatible schemas ({_short(e)})") from None

    def write_table(self, table: pa.Table, uri: str) -> None:
        """Write one Parquet file atomically."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(uri, buf.getvalue())


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
