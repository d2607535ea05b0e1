"""The bulk jobs' RQ serializer is msgpack (never pickle), and job data survives it."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import redis
from rq.job import Job

from inferq.bulk import BulkOptions, Entry, JsonlSink, MsgpackSerializer, count_items, iter_items


def test_round_trip_of_what_rq_stores() -> None:
    meta = {"done": 3, "total": None, "errors": 0, "nested": {"a": [1, 2.5, "x", b"\x00\xff"]}}
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps(meta)) == meta
    # RQ stores (func_name, instance, args, kwargs); msgpack gives the tuples back as lists
    job_tuple = ("inferq.bulk.run_bulk_job", None, ("dep", {"docs": [{"text_field": "é 東京"}]}), {"k": 1})
    func_name, instance, args, kwargs = MsgpackSerializer.loads(MsgpackSerializer.dumps(job_tuple))
    assert (func_name, instance, args, kwargs) == ("inferq.bulk.run_bulk_job", None, ["dep", {"docs": [{"text_field": "é 東京"}]}], {"k": 1})


# the bytes Python's pickle module writes for {"a": 1} (protocol 4), spelled out: no pickle here
PICKLED_DICT = b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


def test_refuses_what_msgpack_cannot_carry_and_never_unpickles() -> None:
    with pytest.raises(TypeError):
        MsgpackSerializer.dumps({"when": object()})
    with pytest.raises((ValueError, msgpack.ExtraData)):
        MsgpackSerializer.loads(PICKLED_DICT)


def test_rq_job_data_is_msgpack() -> None:
    # A client object connects lazily: building a job's payload sends nothing to Redis.
    connection = redis.Redis(host="127.0.0.1", port=1)
    job = Job.create(
        "inferq.bulk.run_bulk_job",
        args=("my-deployment", {"docs": [{"text_field": "hello"}]}),
        kwargs={"output_path": None, "options": {"chunk_docs": 8}},
        connection=connection,
        serializer=MsgpackSerializer,
    )
    data = job.data
    assert not data.startswith(b"\x80")  # a pickle stream starts with PROTO
    assert msgpack.unpackb(data, raw=False) == [
        "inferq.bulk.run_bulk_job",
        None,
        ["my-deployment", {"docs": [{"text_field": "hello"}]}],
        {"output_path": None, "options": {"chunk_docs": 8}},
    ]
    connection.close()


def test_options_validate_and_round_trip() -> None:
    options = BulkOptions(chunk_docs=8, window_docs_per_allocation=32, queue_share=0.25)
    assert BulkOptions.from_dict(MsgpackSerializer.loads(MsgpackSerializer.dumps(options.__dict__))) == options
    assert options.queue_limit(1024) == 256
    assert BulkOptions().queue_limit(1) == 1  # never 0: a bulk job always makes progress
    with pytest.raises(ValueError):
        BulkOptions.from_dict({"chunk_size": 3})
    with pytest.raises(ValueError):
        BulkOptions(queue_share=0)


def test_jsonl_input_skips_blank_lines_and_reports_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text_field": "a"}\n\n[1, 2]\nnot json\n{"text_field": "b"}\n')
    source = {"jsonl_path": str(path)}
    assert count_items(source) == 4
    items = list(iter_items(source))
    assert [i.index for i in items] == [0, 1, 2, 3]
    assert items[0].doc == {"text_field": "a"} and items[3].doc == {"text_field": "b"}
    assert items[1].error is not None and items[2].error is not None
    assert [i.index for i in iter_items(source, start=3)] == [3]


def test_jsonl_sink_resumes_after_a_torn_line_without_duplicates(tmp_path: Path) -> None:
    output, part = tmp_path / "out.jsonl", tmp_path / "out.jsonl.job.part"
    sink = JsonlSink(output, part)
    assert sink.resume() == 0
    sink.write([Entry(0, b'{"v":0}'), Entry(1, error={"status": 400, "type": "t", "reason": "r"})])
    sink.close()
    with open(part, "ab") as torn:  # a worker killed in the middle of a write
        torn.write(b'{"index":2,"res')
    again = JsonlSink(output, part)
    assert again.resume() == 2
    again.write([Entry(2, b'{"v":2}')])
    again.finish()
    assert not part.exists()
    assert output.read_text().splitlines() == [
        '{"index":0,"result":{"v":0}}',
        '{"index":1,"error":{"status":400,"type":"t","reason":"r"}}',
        '{"index":2,"result":{"v":2}}',
    ]


def test_jsonl_sink_starts_over_on_a_part_file_it_did_not_write_in_order(tmp_path: Path) -> None:
    output, part = tmp_path / "out.jsonl", tmp_path / "out.part"
    part.write_bytes(b'{"index":5,"result":{}}\n')
    sink = JsonlSink(output, part)
    assert sink.resume() == 0
    sink.close()
    assert part.read_bytes() == b""
