"""One storage root for the pipeline's outputs, local or in object storage, through fsspec."""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from fsspec.implementations.local import LocalFileSystem
from pydantic import Field

from resources.errors import StorageError


class TrainingStorage(ConfigurableResource):  # type: ignore[type-arg]
    """Reads and writes files under ``root`` (a local folder, ``s3://bucket/prefix`` or ``gs://...``).

    Every write is atomic for readers. Locally the file is written under a temporary
    name in the same folder and renamed. Object stores publish an object only when its
    upload completes, so there the object is written in place.
    """

    root: str = Field(description="Folder or URI under which all outputs live, such as '.data' or 's3://bucket/ml'.")

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.root)
        if isinstance(fs, LocalFileSystem):
            root = fs._strip_protocol(root)
        return fs, root

    def uri(self, *parts: str) -> str:
        """Return the full path or URI of ``parts`` under the root, usable by fsspec, pyarrow and Ray."""
        fs, root = self._fs()
        path = posixpath.join(root, *parts)
        if isinstance(fs, LocalFileSystem):
            return path
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        return f"{protocol}://{path}"

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """Return the fsspec filesystem of the root."""
        return self._fs()[0]

    def exists(self, *parts: str) -> bool:
        fs, root = self._fs()
        return bool(fs.exists(posixpath.join(root, *parts)))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write ``data`` atomically and return its URI.

        Raises:
            StorageError: the write failed; no partial file is visible under the final name.
        """
        fs, root = self._fs()
        path = posixpath.join(root, *parts)
        try:
            if isinstance(fs, LocalFileSystem):
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
                temporary = posixpath.join(
                    posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp"
                )
                try:
                    with fs.open(temporary, "wb") as handle:
                        handle.write(data)
                    # os.replace renames in one step or raises. fs.mv (shutil.move) copies into
                    # the final name when the rename fails, so readers could see a partial file
                    # and a full disk would leave the previous file truncated.
                    os.replace(temporary, path)
                finally:
                    if fs.exists(temporary):
                        fs.rm(temporary)
            else:
                with fs.open(path, "wb") as handle:
                    handle.write(data)
        except OSError as err:
            raise StorageError(
                f"Writing {self.uri(*parts)} failed: {err}. Check that the storage root is writable and has free space."
            ) from err
        return self.uri(*parts)

    def read_bytes(self, *parts: str) -> bytes:
        """Read a whole file.

        Raises:
            FileNotFoundError: nothing is stored under that name.
        """
        fs, root = self._fs()
        with fs.open(posixpath.join(root, *parts), "rb") as handle:
            return bytes(handle.read())

    def write_json(self, value: Any, *parts: str) -> str:
        return self.write_bytes(json.dumps(value, indent=2, sort_keys=True, default=str).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_parquet(self, frame: pd.DataFrame, *parts: str, file_metadata: dict[str, str] | None = None) -> str:
        """Write ``frame`` atomically as Parquet, with ``file_metadata`` in the schema's key-value metadata."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if file_metadata:
            merged = dict(table.schema.metadata or {})
            merged.update({key.encode(): value.encode() for key, value in file_metadata.items()})
            table = table.replace_schema_metadata(merged)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return self.write_bytes(buffer.getvalue(), *parts)

    def read_parquet_file_metadata(self, *parts: str) -> dict[str, str]:
        """Read the key-value metadata of a Parquet file's schema without reading its rows."""
        fs, root = self._fs()
        with fs.open(posixpath.join(root, *parts), "rb") as handle:
            raw = pq.read_schema(handle).metadata or {}
        return {key.decode(): value.decode() for key, value in raw.items()}

    def read_parquet(self, *parts: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read_bytes(*parts)))

    def list(self, *parts: str) -> list[str]:
        """Names directly under a folder, sorted; empty when the folder does not exist."""
        fs, root = self._fs()
        path = posixpath.join(root, *parts)
        if not fs.exists(path):
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in fs.ls(path, detail=False))
