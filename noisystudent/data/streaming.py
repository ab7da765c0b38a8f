"""Unlabeled images that stream: partition files read where they are processed, never listed on the driver.

An in-memory :class:`~noisystudent.data.base.ImageSource` knows every image id up front, which is fine
for Fashion-MNIST and breaks at 10^7-10^8 images. A :class:`StreamSource` knows only its *partitions*
(files, or the top-level folders of a tree), so the driver's state is O(partitions); a worker that
labels partition ``p`` reads that partition's images itself, in batches, and decodes each one alone, so
one corrupt sample is one rejected row, never a failed block.

Formats (``data.unlabeled_format``):

- ``manifest_shards``: one or more Parquet/CSV files with a path column (``data.unlabeled_path_column``,
  default ``path``); every file is a partition. Relative paths resolve against the file's folder; the path
  as written is the image id. **The scalable path**: only the manifest files are listed on the driver.
- ``folder_partitions``: a folder of images; each top-level sub-folder is a partition (listed recursively
  by the worker that labels it), and the loose files of the root one more. A flat folder of 10^7 files is
  therefore one partition listed by one worker: write a sharded manifest for such a folder.
- ``webdataset``: WebDataset ``.tar`` shards; every tar is a partition, read as a stream. Members are
  grouped into samples by key as the format defines (the path up to the first dot of the file name:
  ``a/img_0000.png`` and ``a/img_0000.cls`` are one sample); a sample's image is its first image member,
  and the image id is that member's name (``a/img_0000.png`` for a tar made from a folder), so a
  WebDataset made from a folder labels the same ids as the folder. (The ``webdataset`` package is not a
  dependency; its key rule is twelve lines here.)
- ``parquet_bytes``: Parquet files with an id column (``data.unlabeled_id_column``, default ``image_id``)
  and encoded image bytes (``data.unlabeled_bytes_column``, default ``image``; a Hugging Face
  ``{bytes, path}`` struct works too). Every file is a partition, read in row batches.

Why partitions are files rather than Ray Data read tasks: Ray Data's readers (``read_parquet``,
``read_webdataset``, ``read_binary_files``) cut files into blocks as they see fit, and the labeling job
needs a cut that is the same on every run so that a resumed job skips exactly the partitions it finished
(:mod:`pseudo_labels.sharded`). ``read_binary_files``/``read_images`` over a folder also list every path
on the driver before reading. So the worker reads its partition with pyarrow (Parquet, CSV) or
:mod:`tarfile`, which stream, and Ray Data schedules the partitions on its actor pool.

Paths are local (or any mounted filesystem such as NFS); other pyarrow filesystems were not tried.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..errors import ConfigError, ImageDecodeError, UserError
from .base import IMG_EXTENSIONS, ImageSource, decode_file
from .protocols import Batch

FORMATS = ("manifest_shards", "folder_partitions", "webdataset", "parquet_bytes")
_MANIFEST_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")



def decode_bytes(data: Optional[bytes], image_id: str, in_chans: int) -> np.ndarray:
    """Encoded image bytes as ``(H, W, in_chans)`` uint8; :class:`ImageDecodeError` for anything unreadable."""
    if data is None or len(data) == 0:
        raise ImageDecodeError(image_id, "empty file")
    return decode_file(io.BytesIO(data), image_id, in_chans)


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMG_EXTENSIONS)


def list_files(spec: str | os.PathLike, suffixes: Sequence[str], field: str) -> list[str]:
    """The partition files of ``spec``: a file, a folder (its files with ``suffixes``, recursive, sorted) or
    a glob pattern. Only these files are listed on the driver, never the images inside them."""
    text = os.path.expanduser(str(spec))
    if any(ch in text for ch in "*?["):
        import glob

        files = sorted(os.path.abspath(f) for f in glob.glob(text, recursive=True) if os.path.isfile(f))
    else:
        path = Path(os.path.abspath(text))
        if path.is_file():
            files = [str(path)]
        elif path.is_dir():
            files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(tuple(suffixes))
                           and not p.name.startswith("."))
        else:
            raise UserError(f"{field}: path not found: {path}")
    if not files:
        raise UserError(f"{field}: no {'/'.join(suffixes)} files in {spec}")
    return files


def sample_key(name: str) -> Optional[tuple[str, str]]:
    """``(key, extension)`` of a tar member as the WebDataset format splits its name: the key is the path up
    to the first dot of the file name, the extension the rest (``a/img_0001.seg.png`` -> ``("a/img_0001",
    "seg.png")``); None for a name without one (or a hidden file), which belongs to no sample."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext


def tar_samples(path: str) -> Iterator[tuple[str, bytes]]:
    """The samples of a WebDataset tar, streamed: consecutive members with one :func:`sample_key` are one
    sample; its image is its first member with an image extension (``.cls``/``.json``/``.txt``
    companions are not read), named by that member's path so that a tar made from a folder has the
    folder's ids. A sample without an image is skipped. Errors of the tar itself propagate, after the
    image of the sample being read when it was already whole."""
    current, image = None, None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                split = sample_key(member.name) if member.isfile() else None
                if split is None:
                    continue
                if split[0] != current:
                    if image is not None:
                        yield image
                    current, image = split[0], None
                if image is None and _is_image(member.name):
                    fh = tar.extractfile(member)
                    image = (member.name, fh.read() if fh is not None else b"")
    except (tarfile.TarError, OSError, EOFError):
        if image is not None:
            yield image
        raise
    if image is not None:
        yield image


class StreamSource:
    """Unlabeled images in partitions (files or top-level folders), read by the worker that labels them.

    Picklable and small: it holds the partition names, never an image id. The labeling job calls
    :meth:`read_partition` and :meth:`decode` on its actors; the driver only :attr:`partitions` and
    :meth:`identity`. Not an :class:`~noisystudent.data.base.ImageSource`: there is no random access
    and no length until every partition has been read (the labeling summary counts them).
    """

    classes = None
    labels = None
    hidden_labels = None

    def __init__(self, fmt: str, location: str | os.PathLike, in_chans: int = 3, *, path_column: str = "path",
                 id_column: str = "image_id", bytes_column: str = "image") -> None:
        if fmt not in FORMATS:
            raise ConfigError("data.unlabeled_format", f"must be one of {', '.join(FORMATS)}; got {fmt!r}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.format, self.in_chans = fmt, in_chans
        self.path_column, self.id_column, self.bytes_column = path_column, id_column, bytes_column
        self.skipped: list[tuple[str, str]] = []
        self.location = os.path.abspath(os.path.expanduser(str(location)))
        if fmt == "folder_partitions":
            root = Path(self.location)
            if not root.is_dir():
                raise UserError(f"data.unlabeled: folder not found: {root}")
            self.root = str(root)
            subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True) and not e.name.startswith("."))
            loose = any(e.is_file() and _is_image(e.name) for e in os.scandir(root))
            self.partitions = (["."] if loose else []) + subdirs
            if not self.partitions:
                raise UserError(f"data.unlabeled: folder {root} holds no images")
        else:
            suffixes = {"manifest_shards": _MANIFEST_SUFFIXES, "webdataset": (".tar",),
                        "parquet_bytes": (".parquet", ".pq")}[fmt]
            self.partitions = list_files(location, suffixes, "data.unlabeled")
            self.root = os.path.commonpath([os.path.dirname(f) for f in self.partitions])

    # -- the driver ---------------------------------------------------------------------------------
    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    def identity(self) -> str:
        """A hash of the format and the partition names: what a resumed job must find unchanged."""
        h = hashlib.sha256(self.format.encode())
        for p in range(self.num_partitions):
            h.update(b"\n" + self.partition_name(p).encode("utf-8"))
        return h.hexdigest()

    def partition_name(self, p: int) -> str:
        name = self.partitions[p]
        return name if self.format == "folder_partitions" else os.path.relpath(name, self.root)

    def describe(self) -> str:
        return f"StreamSource({self.format}, {self.location}): {self.num_partitions} partitions, in_chans={self.in_chans}"

    # -- a worker -----------------------------------------------------------------------------------
    def read_partition(self, p: int, batch_size: int) -> Iterator[Batch]:
        """Partition ``p`` as ``(ids, raws)`` batches of at most ``batch_size``, in a fixed order.

        A sample that cannot be read at all (a tar cut short) ends the partition with one rejected id
        ``<partition>#rest`` whose raw is an :class:`ImageDecodeError`."""
        reader = {"manifest_shards": self._manifest, "folder_partitions": self._folder,
                  "webdataset": self._tar, "parquet_bytes": self._parquet}[self.format]
        yield from reader(p, batch_size)

    def decode(self, image_id: str, raw: Any) -> np.ndarray:
        if isinstance(raw, ImageDecodeError):
            raise raw
        if self.format in ("manifest_shards", "folder_partitions"):
            return decode_file(raw, image_id, self.in_chans)
        return decode_bytes(raw, image_id, self.in_chans)

    def _manifest(self, p: int, batch_size: int) -> Iterator[Batch]:
        path = self.partitions[p]
        base = os.path.dirname(path)
        col = self.path_column
        if path.lower().endswith((".csv", ".csv.gz")):
            import pyarrow as pa
            import pyarrow.csv as pcsv

            try:
                reader = pcsv.open_csv(path, convert_options=pcsv.ConvertOptions(include_columns=[col],
                                                                                   column_types={col: pa.string()}))
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"manifest {path}: cannot read column {col!r} ({exc})") from None
            batches = (b.column(0).to_pylist() for b in reader)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
                batches = (b.column(0).to_pylist() for b in pf.iter_batches(batch_size=batch_size, columns=[col]))
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"manifest {path}: cannot read column {col!r} ({exc})") from None
        pending: list[str] = []
        for values in batches:
            pending.extend(v.strip().replace("\\", "/") if isinstance(v, str) else "" for v in values)
            while len(pending) >= batch_size:
                chunk, pending = pending[:batch_size], pending[batch_size:]
                yield self._paths(chunk, base)
        if pending:
            yield self._paths(pending, base)

    @staticmethod
    def _paths(ids: list[str], base: str) -> Batch:
        ids = [str(PurePosixPath(i)) if i else "" for i in ids]
        return ids, [i if os.path.isabs(i) else os.path.join(base, i) for i in ids]

    def _folder(self, p: int, batch_size: int) -> Iterator[Batch]:
        from .folder import scan_images

        name = self.partitions[p]
        root = Path(self.root)
        if name == ".":
            files = sorted(root / e.name for e in os.scandir(root) if e.is_file() and _is_image(e.name))
        else:
            files = scan_images(root / name)
        ids = [f.relative_to(root).as_posix() for f in files]
        for s in range(0, len(ids), batch_size):
            yield ids[s:s + batch_size], [str(f) for f in files[s:s + batch_size]]

    def _tar(self, p: int, batch_size: int) -> Iterator[Batch]:
        path = self.partitions[p]
        ids: list[str] = []
        raws: list[Any] = []
        try:
            for image_id, data in tar_samples(path):
                ids.append(image_id)
                raws.append(data)
                if len(ids) >= batch_size:
                    yield ids, raws
                    ids, raws = [], []
        except (tarfile.TarError, OSError, EOFError) as exc:
            rest = f"{self.partition_name(p)}#rest"
            ids.append(rest)
            raws.append(ImageDecodeError(rest, f"tar shard unreadable from here on: {type(exc).__name__}: {exc}"))
        if ids:
            yield ids, raws

    def _parquet(self, p: int, batch_size: int) -> Iterator[Batch]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.partitions[p]
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"data.unlabeled: parquet shard {path} is unreadable ({exc})") from None
        for col, key in ((self.id_column, "data.unlabeled_id_column"), (self.bytes_column, "data.unlabeled_bytes_column")):
            if col not in names:
                raise UserError(f"{key}: parquet shard {path} has no column {col!r} (columns: {', '.join(names)})")
        for b in pf.iter_batches(batch_size=batch_size, columns=[self.id_column, self.bytes_column]):
            ids = [str(v) for v in b.column(0).to_pylist()]
            data = b.column(1)
            if pa.types.is_struct(data.type):  # Hugging Face's Image feature: {bytes, path}
                data = data.field("bytes")
            yield ids, data.to_pylist()


class ArrowFileSource(ImageSource):
    """Image files named by an Arrow string array of ids (the selected set of a streaming source): the
    ids stay in one Arrow buffer, not a Python string each; paths are ``root/<id>`` unless absolute."""

    def __init__(self, ids: Any, root: str, in_chans: int) -> None:
        import pyarrow as pa

        super().__init__(in_chans, None)
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        self._ids = ids if isinstance(ids, pa.Array) else pa.array(list(ids), pa.string())
        self.root = str(root)

    def __len__(self) -> int:
        return len(self._ids)

    def image_id(self, i: int) -> str:
        return self._ids[self._check_index(i)].as_py()

    def path(self, i: int) -> str:
        iid = self.image_id(i)
        return iid if os.path.isabs(iid) else os.path.join(self.root, iid)

    def load(self, i: int) -> np.ndarray:
        return decode_file(self.path(i), self.image_id(i), self.in_chans)

    def _take(self, idx: np.ndarray) -> None:
        import pyarrow as pa

        self._ids = self._ids.take(pa.array(np.asarray(idx, dtype=np.int64)))

    def _where(self) -> str:
        return self.root


def selected_files(source: StreamSource, image_ids: Any) -> Any:
    """The selected images of a streaming source as a random-access source for training.

    Folder partitions: ids are relative to the folder. Manifest shards: ids are the paths as written,
    absolute or relative to the manifests' (common) folder. WebDataset and Parquet-bytes sources cannot be
    read one image at a time cheaply; training on their selection is refused with a :class:`UserError`."""
    if source.format not in ("manifest_shards", "folder_partitions"):
        raise UserError(f"data.unlabeled_format: a student cannot train on the selection of a {source.format} "
                        "source yet (no random access to one image); label a manifest_shards or folder_partitions "
                        "source, or extract the selected images to files and list them in a manifest")
    return ArrowFileSource(image_ids, source.root, source.in_chans)
