"""Streaming paired items: sharded paired manifests (``data.kind: paired``, ``unlabeled_format: manifest_shards``).

Each shard (Parquet/CSV) carries ``image_id`` and one path column per modality, like a paired manifest
(:mod:`.paired_readers`). The labeling job streams the shards reading the *teacher's* column (its view,
:meth:`PairedStreamSource.view`); the item's key is its ``image_id``, so the Parquet pseudo-labels join to
any modality. The student's selected items are then found by one streamed pass over the shards reading the
id and every modality column (:func:`selected_pairs`), kept only for the selected ids: the driver never
holds the whole unlabeled list. An item whose cell of the read modality is empty is one rejected row
("missing modality"), as an unreadable image is.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Iterator, Optional

from ..errors import ImageDecodeError, UserError
from .paired import Modality, PairedSource, decode_modality
from .streaming import Batch, StreamSource

__all__ = ["PairedStreamSource", "selected_pairs"]


def _read_columns(path: str, columns: list[str], batch_size: int) -> Iterator[dict[str, list]]:
    """Batches of ``columns`` of one shard as ``{column: values}`` (streamed: pyarrow's readers)."""
    import pyarrow as pa

    try:
        if path.lower().endswith((".csv", ".csv.gz")):
            import pyarrow.csv as pcsv

            reader = pcsv.open_csv(path, convert_options=pcsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in columns}))
            for b in reader:
                yield {c: b.column(c).to_pylist() for c in columns}
        else:
            import pyarrow.parquet as pq

            for b in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
                yield {c: b.column(c).to_pylist() for c in columns}
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise UserError(f"paired manifest shard {path}: cannot read columns {', '.join(columns)} ({exc})") from None


def _path(value: Any, base: str) -> Optional[str]:
    v = value.strip().replace("\\", "/") if isinstance(value, str) else ""
    return (v if os.path.isabs(v) else os.path.join(base, v)) if v else None


class PairedStreamSource(StreamSource):
    """Sharded paired manifests read in modality ``modality`` (``path_column`` is that modality's column)."""

    def __init__(self, location: str, modalities: dict[str, Modality], modality: str, id_column: str = "image_id"):
        super().__init__("manifest_shards", location, 1, path_column=modality, id_column=id_column)
        self.modalities, self.modality = dict(modalities), modality
        self.in_chans = self.modalities[modality].channels

    def view(self, modality: Optional[str]) -> "PairedStreamSource":
        """The same shards read in ``modality``."""
        if modality is None or modality == self.modality:
            return self
        if modality not in self.modalities:
            raise ValueError(f"modality {modality!r} is not one of {', '.join(self.modalities)}")
        new = copy.copy(self)
        new.modality, new.path_column, new.in_chans = modality, modality, self.modalities[modality].channels
        return new

    def describe(self) -> str:
        return f"{super().describe()}, modality {self.modality} of {', '.join(self.modalities)}"

    def _manifest(self, p: int, batch_size: int) -> Iterator[Batch]:
        path = self.partitions[p]
        base = os.path.dirname(path)
        for cols in _read_columns(path, [self.id_column, self.path_column], batch_size):
            ids = [str(v).strip() if v is not None else "" for v in cols[self.id_column]]
            raws = [_path(v, base) or ImageDecodeError(i, f"missing modality {self.modality}")
                    for i, v in zip(ids, cols[self.path_column])]
            for k in range(0, len(ids), batch_size):
                yield ids[k:k + batch_size], raws[k:k + batch_size]

    def selected(self, image_ids: Any) -> PairedSource:
        """What a student trains on: :func:`selected_pairs` (``streaming.selected_files`` delegates here)."""
        return selected_pairs(self, image_ids)

    def decode(self, image_id: str, raw: Any):
        if isinstance(raw, ImageDecodeError):
            raise raw
        return decode_modality(raw, image_id, self.modalities[self.modality])


def selected_pairs(source: PairedStreamSource, image_ids: Any, batch_size: int = 65_536) -> PairedSource:
    """The selected items (``image_ids``, in that order) of a sharded paired manifest, with every modality's
    file: one streamed pass over the shards keeping only the selected rows."""
    wanted = image_ids.to_pylist() if hasattr(image_ids, "to_pylist") else list(image_ids)
    want = set(wanted)
    found: dict[str, dict[str, Optional[str]]] = {}
    mods = list(source.modalities)
    for path in source.partitions:
        base = os.path.dirname(path)
        for cols in _read_columns(path, [source.id_column] + mods, batch_size):
            for k, iid in enumerate(cols[source.id_column]):
                iid = str(iid).strip() if iid is not None else ""
                if iid in want:
                    found[iid] = {m: _path(cols[m][k], base) for m in mods}
    missing = [i for i in wanted if i not in found or any(v is None for v in found[i].values())]
    if missing:
        raise UserError(f"data.unlabeled: selected item {missing[0]!r} lacks a modality (or is in no shard); "
                        f"{len(missing)} such of {len(wanted)}")
    return PairedSource(source.root, wanted, {m: [found[i][m] for i in wanted] for m in mods}, source.modalities,
                        source.modality)
