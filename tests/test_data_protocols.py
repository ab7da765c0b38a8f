"""Source kinds are declared protocols (random access, partitioned), and hidden labels have one home that
maps them into the run's classes by name."""

from __future__ import annotations

import numpy as np
import pytest

from bench.sources import SyntheticStream
from noisystudent.data.array import ArraySource
from noisystudent.data.hidden import class_map, has_hidden_labels, remap, true_labels
from noisystudent.data.protocols import (AttachedOnWorker, HiddenLabelReader, IdentifiedSource, PartitionedSource,
                                         RandomAccessSource)
from noisystudent.data.streaming import StreamSource
from pipelines.report.rundata import hidden_labels_for
from pipelines.steps.labeling import _truth_lookup
from pseudo_labels.chunks import IndexChunks
from pseudo_labels.sharded import ids_sha256, is_streaming


def _hidden_source(classes):
    """Six unlabeled images whose true classes are known: 0, 1, 2, 0, -1 (unknown), 2 in ``classes``' order."""
    src = ArraySource(np.zeros((6, 4, 4), np.uint8), prefix="u")
    src.classes, src.hidden_labels = classes, np.asarray([0, 1, 2, 0, -1, 2], np.int64)
    return src


def test_each_source_is_the_kind_it_declares():
    array = ArraySource(np.zeros((3, 4, 4), np.uint8))
    chunks = IndexChunks(array, 2)
    synthetic = SyntheticStream(10, 4)
    assert isinstance(array, RandomAccessSource) and not isinstance(array, PartitionedSource)
    assert isinstance(chunks, PartitionedSource) and isinstance(chunks, AttachedOnWorker)
    assert isinstance(chunks, HiddenLabelReader) and not isinstance(chunks, IdentifiedSource)
    assert isinstance(synthetic, PartitionedSource) and isinstance(synthetic, IdentifiedSource)
    assert not isinstance(synthetic, RandomAccessSource)
    assert is_streaming(synthetic) and not is_streaming(array)
    assert ids_sha256(synthetic) == synthetic.identity() and len(ids_sha256(array)) == 64


def test_a_stream_source_is_partitioned_and_named(tmp_path):
    from PIL import Image

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("L", (4, 4)).save(tmp_path / sub / "x.png")
    src = StreamSource("folder_partitions", tmp_path, in_chans=1)
    assert isinstance(src, PartitionedSource) and isinstance(src, IdentifiedSource)
    assert not isinstance(src, RandomAccessSource) and not has_hidden_labels(src)


def test_true_labels_map_the_sources_classes_into_the_runs_by_name():
    src = _hidden_source(["b", "c", "a"])  # the source's own order
    run_classes = ["a", "b", "c", "d"]
    np.testing.assert_array_equal(class_map(src, run_classes), [1, 2, 0, -1])
    got = true_labels(src, ["u-000005", "u-000000", "u-000004", "nope", "u-000001"], run_classes)
    np.testing.assert_array_equal(got, [0, 1, -1, -1, 2])  # hidden 2 is the source's "a": run index 0
    np.testing.assert_array_equal(remap(np.asarray([2, -1, 0]), class_map(src, run_classes)), [0, -1, 1])


def test_every_reader_of_hidden_labels_agrees():
    """The selection's truth lookup and the report's used to differ: the report did not remap classes."""
    class Bundle:
        unlabeled = _hidden_source(["b", "c", "a"])
        classes = ["a", "b", "c"]

    ids = ["u-000000", "u-000001", "u-000002", "u-000004"]
    want = true_labels(Bundle.unlabeled, ids, Bundle.classes)
    np.testing.assert_array_equal(want, [1, 2, 0, -1])
    np.testing.assert_array_equal(_truth_lookup(Bundle.unlabeled, Bundle.classes)(ids), want)
    np.testing.assert_array_equal(hidden_labels_for(Bundle, ids), want)
    chunks = IndexChunks(Bundle.unlabeled, 4)
    np.testing.assert_array_equal(remap(chunks.hidden([0, 1, 2, 4]), class_map(Bundle.unlabeled, Bundle.classes)), want)


@pytest.mark.parametrize("classes", [None, ["a", "b", "c"]])
def test_hidden_labels_in_the_runs_order_pass_through(classes):
    src = _hidden_source(classes)
    np.testing.assert_array_equal(true_labels(src, ["u-000003", "u-000004"], ["a", "b", "c"]), [0, -1])
    assert true_labels(ArraySource(np.zeros((1, 4, 4), np.uint8)), ["img-000000"], ["a"]) is None
