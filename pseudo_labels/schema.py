"""The pseudo-label Parquet schema, its file metadata, and turning teacher probabilities into rows.

One row per unlabeled image, keyed by ``image_id``. Storing the top-k classes and their
probabilities instead of the full distribution keeps 1,000-class labels at about 60 bytes an image;
readers renormalise the k probabilities (see :func:`pseudo_labels.store.soft_targets`).

Every shard carries :class:`LabelMetadata` as Parquet key-value metadata (JSON under the
``noisystudent`` key) so a shard read on its own still says which classes its integers mean, at which
temperature it was made and by which teacher(s). Readers refuse shards whose metadata disagree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from noisystudent.errors import UserError

# Bump when a column is added, removed or changes meaning; readers refuse other versions.
SCHEMA_VERSION = 1

# The key under which LabelMetadata is stored in the Parquet key-value metadata.
METADATA_KEY = b"noisystudent"

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("entropy", pa.float32(), nullable=False),
        pa.field("topk_classes", pa.list_(pa.int32()), nullable=False),
        pa.field("topk_probs", pa.list_(pa.float32()), nullable=False),
        pa.field("teacher", pa.string(), nullable=False),
    ]
)

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

# A selection's shards: the label schema plus how many times a row counts (a duplicated class's rows > 1).
SELECTED_SCHEMA = SCHEMA.append(pa.field("weight", pa.int32(), nullable=False))


@dataclass
class LabelMetadata:
    """What a pseudo-label shard's integers mean and how they were made.

    ``topk`` is the number of classes stored per row (``num_classes`` when all are stored).
    ``teachers`` lists checkpoint ids; more than one means the probabilities are an ensemble mean, weighted
    by ``teacher_weights`` (summing to 1, in the order of ``teachers``) or equal when it is None (shards
    written before weights existed read as equal weights).
    """

    class_names: list[str]
    num_classes: int
    temperature: float = 1.0
    topk: Optional[int] = None
    teachers: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    teacher_weights: Optional[list[float]] = None

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        self.num_classes = int(self.num_classes)
        self.temperature = float(self.temperature)
        self.topk = effective_topk(self.topk, self.num_classes)
        self.teachers = [str(t) for t in self.teachers]
        self.schema_version = int(self.schema_version)
        if self.teacher_weights is not None:
            self.teacher_weights = [float(w) for w in self.teacher_weights]
            if len(self.teacher_weights) != len(self.teachers):
                raise UserError(f"label metadata: {len(self.teacher_weights)} teacher weights for "
                                f"{len(self.teachers)} teachers")
        if len(self.class_names) != self.num_classes:
            raise UserError(
                f"label metadata: {len(self.class_names)} class names for num_classes={self.num_classes}"
            )

    def record(self) -> dict:
        """The fields as plain data; ``teacher_weights`` only when set, so equal-weight labels keep the exact
        metadata (and job record) they had before weights existed, and stay resumable."""
        out = asdict(self)
        if out["teacher_weights"] is None:
            del out["teacher_weights"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.record(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "metadata") -> "LabelMetadata":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{where}: pseudo-label metadata is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{where}: pseudo-label metadata is not a JSON object")
        known = {"class_names", "num_classes", "temperature", "topk", "teachers", "schema_version", "teacher_weights"}
        missing = {"class_names", "num_classes", "schema_version"} - raw.keys()
        if missing:
            raise UserError(f"{where}: pseudo-label metadata lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_parquet_metadata(self) -> dict[bytes, bytes]:
        """Key-value metadata for ``pa.Schema.with_metadata``."""
        return {METADATA_KEY: self.to_json().encode("utf-8")}

    @classmethod
    def from_parquet_metadata(cls, kv: Optional[dict[bytes, bytes]], where: str) -> "LabelMetadata":
        """Parse the metadata of one file; ``where`` (the file) goes into every error message."""
        if not kv or METADATA_KEY not in kv:
            raise UserError(f"{where} is not a noisystudent pseudo-label shard (no '{METADATA_KEY.decode()}' metadata)")
        return cls.from_json(kv[METADATA_KEY], where)


def effective_topk(topk: Optional[int], num_classes: int) -> int:
    """The k actually stored: all classes when ``topk`` is None or not smaller than the class count."""
    if topk is None or int(topk) >= num_classes:
        return int(num_classes)
    if int(topk) < 1:
        raise UserError(f"topk must be at least 1, got {topk}")
    return int(topk)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row; 0 * log 0 counts as 0."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def probs_to_table(
    image_ids: Sequence[str],
    probs: np.ndarray,
    topk: Optional[int],
    teacher_id: str,
) -> pa.Table:
    """Rows of :data:`SCHEMA` from an ``(N, C)`` probability matrix.

    ``label``, ``confidence`` and ``entropy`` come from the full distribution; the top-k lists are
    sorted by probability, highest first (ties: lower class index first), so ``topk_classes[0] ==
    label``. ``topk`` None or >= C stores every class.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
    n, c = probs.shape
    if len(image_ids) != n:
        raise ValueError(f"{len(image_ids)} image ids for {n} probability rows")
    k = effective_topk(topk, c)
    # A stable sort on -p keeps the lower class index first among equal probabilities, so the first
    # column always equals argmax (which also picks the lowest index on ties).
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int32)
    top_p = np.take_along_axis(probs, order, axis=1)
    label = order[:, 0] if n else np.zeros(0, np.int32)
    confidence = top_p[:, 0] if n else np.zeros(0, np.float32)
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    columns = [
        pa.array(list(image_ids), type=pa.string()),
        pa.array(label, type=pa.int32()),
        pa.array(confidence, type=pa.float32()),
        pa.array(entropy(probs).astype(np.float32), type=pa.float32()),
        pa.ListArray.from_arrays(offsets, pa.array(order.reshape(-1), type=pa.int32())),
        pa.ListArray.from_arrays(offsets, pa.array(top_p.reshape(-1), type=pa.float32())),
        pa.array([teacher_id] * n, type=pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def empty_table() -> pa.Table:
    """A zero-row table of :data:`SCHEMA` (a chunk whose every image was rejected)."""
    return SCHEMA.empty_table()
