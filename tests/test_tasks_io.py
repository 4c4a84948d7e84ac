"""Record file readers: every layout real benchmark files use, and clear errors for bad ones."""

from __future__ import annotations

import json

import pytest

from halluc_bench.tasks.io import RecordFileError, read_records, write_jsonl_atomic

RECORDS = [{"question_id": 1, "text": "Is there a dog?"}, {"question_id": 2, "text": "Is there a cat?"}]


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_read_jsonl(tmp_path):
    path = _write(tmp_path, "a.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS))
    assert read_records(path) == RECORDS


def test_read_jsonl_crlf_bom_blank_lines(tmp_path):
    body = b"\xef\xbb\xbf" + b"\r\n\r\n".join(json.dumps(r).encode() for r in RECORDS) + b"\r\n"
    assert read_records(_write(tmp_path, "a.jsonl", body)) == RECORDS


def test_read_json_array(tmp_path):
    assert read_records(_write(tmp_path, "a.json", json.dumps(RECORDS, indent=4).encode())) == RECORDS


def test_read_single_object(tmp_path):
    record = {"overall_metrics": {"CHAIRs": 0.4}, "sentences": []}
    assert read_records(_write(tmp_path, "a.jsonl", json.dumps(record).encode())) == [record]


def test_read_concatenated_pretty(tmp_path):
    body = "".join(json.dumps(r, indent=2) + "\r\n" for r in RECORDS).encode()
    assert read_records(_write(tmp_path, "a.json", body)) == RECORDS


def test_read_empty_file(tmp_path):
    assert read_records(_write(tmp_path, "a.jsonl", b"\n  \n")) == []


def test_malformed_line_named(tmp_path):
    body = b'{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n'
    with pytest.raises(RecordFileError, match=r"a\.jsonl:3: invalid JSON"):
        read_records(_write(tmp_path, "a.jsonl", body))


def test_malformed_first_line_named(tmp_path):
    with pytest.raises(RecordFileError, match=r"a\.jsonl:1: invalid JSON"):
        read_records(_write(tmp_path, "a.jsonl", b'{"a": }\n{"a": 2}\n'))


def test_non_object_record(tmp_path):
    with pytest.raises(RecordFileError, match="record 2 is a JSON int"):
        read_records(_write(tmp_path, "a.json", b"[{}, 5]"))


def test_invalid_utf8_named(tmp_path):
    with pytest.raises(RecordFileError, match=r"a\.jsonl:2: invalid UTF-8"):
        read_records(_write(tmp_path, "a.jsonl", b'{"a": 1}\n{"a": "\xff"}\n'))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_records(tmp_path / "absent.jsonl")


def test_write_atomic_round_trip(tmp_path):
    path = write_jsonl_atomic(RECORDS, tmp_path / "out" / "a.jsonl")
    assert read_records(path) == RECORDS
    assert [p.name for p in path.parent.iterdir()] == ["a.jsonl"]


def test_real_concatenated_crlf_captions(realfile):
    records = read_records(realfile("POPE/caption_data/Instruction1_llava.json"))
    jsonl_records = read_records(realfile("POPE/caption_data/Instruction1_mplug.json"))
    assert len(records) == 2000
    assert len(jsonl_records) == 2000
    assert records[0]["question_id"] == 0
    assert {"question_id", "text"} <= set(jsonl_records[0])


def test_real_single_object_jsonl(realfile):
    records = read_records(realfile("vlm-decoding-hal/re_log/llava-1.5/regular_chair.jsonl"))
    assert len(records) == 1
    assert records[0]["overall_metrics"]["CHAIRs"] == 0.446


def test_real_json_array_questions(realfile):
    records = read_records(realfile("POPE/output/seem/gqa/gqa_pope_seem_random.json"))
    assert len(records) == 3000
    assert set(records[0]) == {"question_id", "image", "text", "label"}
