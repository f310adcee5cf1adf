"""Payload and result compression (issue 22, cost optimization): the codec's frames, its
bounds against damaged or hostile frames, readers taking compressed and plain values
mixed, and encryption composing with it (compressed before encrypted)."""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest

from helpers import QueueFactory, wait_for_status
from kitium_queue import ConfigurationError, JobStatus, SerializationError
from kitium_queue.codec import Serializer
from kitium_queue.features.compression import MAGIC, CompressionCodec, zstd_available
from kitium_queue.features.encryption import generate_key
from kitium_queue.features.encryption.crypto import parse_envelope

DOC = {"rows": [{"id": i, "name": f"customer {i}", "status": "active"} for i in range(150)]}


@pytest.mark.parametrize("algorithm", ["zstd", "zlib"])
def test_codec_round_trip_threshold_and_stats(algorithm: str) -> None:
    codec = CompressionCodec(algorithm=algorithm, threshold=100)
    ser = Serializer([codec])
    raw = ser.dumps(DOC)
    assert raw.startswith(MAGIC) and len(raw) < len(Serializer().dumps(DOC)) / 4
    assert ser.loads(raw) == DOC
    small = ser.dumps({"a": 1})
    assert small == b'{"a":1}'  # below the threshold: stored as it is
    noise = os.urandom(5000)
    assert codec.encode(noise) == noise  # does not shrink: stored as it is
    st = codec.stats()
    assert st.algorithm == algorithm and st.seen == 3 and st.compressed == 1
    assert st.bytes_out < st.bytes_in and 0 < st.ratio < 1


def test_auto_picks_zstd_when_installed() -> None:
    assert CompressionCodec().algorithm == ("zstd" if zstd_available() else "zlib")
    for bad in (
        {"algorithm": "brotli"},
        {"threshold": 0},
        {"threshold": True},
        {"level": 99},
        {"algorithm": "zlib", "level": 10},
    ):
        with pytest.raises(ConfigurationError):
            CompressionCodec(**bad)


def test_plain_values_pass_and_damaged_frames_fail_clearly() -> None:
    codec = CompressionCodec(threshold=1)
    for plain in (b"", b"{}", b'"x"', b"\x00kq", b"[1,2]"):
        assert codec.decode(plain) == plain
    for bad in (MAGIC + b"s" + b"garbage", MAGIC + b"z" + b"garbage", MAGIC + b"q" + b"x"):
        with pytest.raises(SerializationError):
            codec.decode(bad)
    truncated = codec.encode(b"a" * 5000)[:-4]
    with pytest.raises(SerializationError):
        codec.decode(truncated)


@pytest.mark.parametrize("algorithm", ["zstd", "zlib"])
def test_decompression_is_bounded(algorithm: str) -> None:
    """A frame expanding beyond max_size is refused instead of filling memory."""
    big = CompressionCodec(algorithm=algorithm, threshold=1)
    frame = big.encode(b"0" * 2_000_000)
    assert len(frame) < 10_000
    small = CompressionCodec(algorithm=algorithm, threshold=1, max_size=1_000_000)
    with pytest.raises(SerializationError, match="1000000"):
        small.decode(frame)
    if algorithm == "zlib":
        # A hand-made frame too (no size header at all).
        bomb = MAGIC + b"z" + zlib.compress(b"\x00" * 3_000_000)
        with pytest.raises(SerializationError, match="beyond the limit"):
            small.decode(bomb)


async def test_mixed_compressed_and_plain_jobs_are_read_alike(
    make_queue: QueueFactory,
) -> None:
    plain = make_queue("mix")
    before = await plain.add_job("n", DOC)  # written before compression was enabled
    squeezed = make_queue(
        "mix",
        advanced={"cost_optimization": {"enabled": True, "compression": {"threshold_bytes": 64}}},
    )
    after = await squeezed.add_job("n", DOC)
    small = await squeezed.add_job("n", {"tiny": True})
    client = await squeezed.client()
    assert (await client.hget(squeezed.keys.job(before), "d")).startswith(b"{")
    assert (await client.hget(squeezed.keys.job(after), "d")).startswith(MAGIC)
    assert (await client.hget(squeezed.keys.job(small), "d")).startswith(b"{")
    seen: list[Any] = []

    def process(job: Any) -> Any:
        seen.append(job.data)
        return {"echo": job.data}

    squeezed.process("n", process)
    await squeezed.start()
    for jid in (before, after, small):
        await wait_for_status(squeezed, jid, JobStatus.COMPLETED)
    assert seen == [DOC, DOC, {"tiny": True}]
    info = await squeezed.get_job_status(after)
    assert info is not None and info.result == {"echo": DOC} and info.data == DOC
    assert (await client.hget(squeezed.keys.job(after), "r")).startswith(MAGIC)
    # A process without the codec reads the plain ones and says why it cannot read the
    # others (not a silent garbage value).
    assert (await plain.get_job_status(small)).data == {"tiny": True}  # type: ignore[union-attr]
    unreadable = await plain.get_job_status(after)
    assert unreadable is not None and unreadable.damaged


async def test_encryption_composes_compress_then_encrypt(make_queue: QueueFactory) -> None:
    q = make_queue(
        "enc",
        advanced={
            "encryption": {"enabled": True, "keys": [{"key_id": "k1", "key": generate_key()}]},
            "cost_optimization": {"enabled": True, "compression": {"threshold_bytes": 256}},
        },
    )
    got: list[Any] = []

    def process(job: Any) -> Any:
        got.append(job.data)
        return DOC

    q.process("n", process)
    jid = await q.add_job("n", DOC, encrypted=True)
    await q.start()
    info = await wait_for_status(q, jid, JobStatus.COMPLETED)
    assert got == [DOC] and info.result == DOC and info.data == DOC
    client = await q.client()
    stored = q.serializer.loads(await client.hget(q.keys.job(jid), "d"))
    *_, ciphertext = parse_envelope(stored)
    plain_json = len(Serializer().dumps(DOC))
    # The ciphertext is far smaller than the JSON it carries: the JSON was compressed
    # before it was encrypted (ciphertext itself does not compress).
    assert len(ciphertext) < plain_json / 4, (len(ciphertext), plain_json)
