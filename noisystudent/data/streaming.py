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
- ``webdataset``: WebDataset ``.tar`` shards; every tar is a partition, read as a stream. The image id is
  the member's name inside the tar (``a/img_0000.png`` for a tar made from a folder), so a WebDataset
  made from a folder labels the same ids as the folder.
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

FORMATS = ("manifest_shards", "folder_partitions", "webdataset", "parquet_bytes")
_MANIFEST_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")

#: A batch of one partition: image ids and what :meth:`StreamSource.decode` turns into pixels.
Batch = tuple[list[str], list[Any]]


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
            with tarfile.open(path, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile() or not _is_image(member.name):
                        continue  # .cls / .json / .txt companions of a sample
                    fh = tar.extractfile(member)
                    ids.append(member.name)
                    raws.append(fh.read() if fh is not None else b"")
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


class SyntheticStream:
    """``n`` deterministic pseudo-random images made on the fly in the worker (no disk): the scale bench's source.

    Partition ``p`` holds images ``p * partition_size ..``; image ``i`` is a fixed function of ``(seed, i)``
    with a bright band whose position is its "class", so a teacher can tell images apart."""

    format = "synthetic"
    classes = None
    labels = None
    hidden_labels = None

    def __init__(self, n: int, partition_size: int, image_size: int = 16, in_chans: int = 1, seed: int = 0,
                 bands: int = 10) -> None:
        self.n, self.partition_size, self.image_size = int(n), int(partition_size), int(image_size)
        self.in_chans, self.seed, self.bands = in_chans, seed, bands
        self.skipped: list[tuple[str, str]] = []
        self.partitions = list(range(-(-self.n // self.partition_size)))
        self.root = ""

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    def identity(self) -> str:
        return f"synthetic-{self.n}-{self.partition_size}-{self.image_size}-{self.in_chans}-{self.seed}"

    def partition_name(self, p: int) -> str:
        return f"synthetic-{p}"

    def describe(self) -> str:
        return f"SyntheticStream({self.n} images, {self.num_partitions} partitions)"

    def read_partition(self, p: int, batch_size: int) -> Iterator[Batch]:
        start, stop = p * self.partition_size, min(self.n, (p + 1) * self.partition_size)
        for s in range(start, stop, batch_size):
            idx = list(range(s, min(stop, s + batch_size)))
            yield [f"syn-{i:09d}" for i in idx], idx

    def decode(self, image_id: str, raw: int) -> np.ndarray:
        size = self.image_size
        rng = np.random.default_rng([self.seed, int(raw)])
        img = rng.integers(0, 60, size=(size, size, self.in_chans), dtype=np.uint8)
        band = int(raw) % self.bands
        w = max(1, size // self.bands)
        img[:, band * w:(band + 1) * w] += 180
        return img


class IndexChunks:
    """An in-memory :class:`~noisystudent.data.base.ImageSource` cut into fixed chunks of indices: the
    partitions of today's sources (Fashion-MNIST, a folder or manifest listed up front).

    The source itself goes to the workers through Ray's object store once (``source_ref``), not pickled
    into every actor's constructor; a worker resolves it in :meth:`attach`."""

    format = "index_chunks"

    def __init__(self, source: Any, chunk_size: int, source_ref: Any = None) -> None:
        self.n, self.chunk_size = len(source), int(chunk_size)
        self.in_chans = source.in_chans
        self.partitions = list(range(-(-self.n // self.chunk_size)))
        self._source_ref = source_ref if source_ref is not None else source
        self._source = None

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def attach(self) -> None:
        if self._source is None:
            ref = self._source_ref
            if type(ref).__name__ == "ObjectRef":
                import ray

                ref = ray.get(ref)
            self._source = ref

    def partition_name(self, p: int) -> str:
        return f"indices {p * self.chunk_size}..{min(self.n, (p + 1) * self.chunk_size) - 1}"

    def read_partition(self, p: int, batch_size: int) -> Iterator[Batch]:
        self.attach()
        start, stop = p * self.chunk_size, min(self.n, (p + 1) * self.chunk_size)
        for s in range(start, stop, batch_size):
            idx = list(range(s, min(stop, s + batch_size)))
            yield [self._source.image_id(i) for i in idx], idx

    def decode(self, image_id: str, raw: int) -> np.ndarray:
        self.attach()
        return self._source.load(int(raw))

    def hidden(self, raws: list[int]) -> Optional[np.ndarray]:
        """The source's hidden labels of these indices (source class indices), or None without."""
        self.attach()
        h = getattr(self._source, "hidden_labels", None)
        return None if h is None else np.asarray(h, dtype=np.int64)[np.asarray(raws, dtype=np.int64)]


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
    if hasattr(source, "selected"):  # sharded paired manifests: every modality of the selected items
        return source.selected(image_ids)
    if source.format not in ("manifest_shards", "folder_partitions"):
        raise UserError(f"data.unlabeled_format: a student cannot train on the selection of a {source.format} "
                        "source yet (no random access to one image); label a manifest_shards or folder_partitions "
                        "source, or extract the selected images to files and list them in a manifest")
    return ArrowFileSource(image_ids, source.root, source.in_chans)
