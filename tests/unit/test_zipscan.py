"""The CRCs of an upload's stored archive members, computed as its bytes stream past: they
agree with the archive's directory for what np.savez writes, whatever the chunking, and
anything the scan cannot follow (or a corrupt member) is still read back and judged."""

from __future__ import annotations

import io
import random
import struct
import zipfile

import numpy as np
import pytest

from pruning_core import modelcheck
from pruning_core.zipscan import StoredMembers


def _npz(path, compressed=False, n=64):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((n, 4, 4, 1), dtype=np.float32),
        "y_train": rng.integers(0, 3, n),
        "x_test": rng.random((8, 4, 4, 1), dtype=np.float32),
        "y_test": rng.integers(0, 3, 8),
    }
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _scan(data: bytes, sizes) -> StoredMembers:
    members, i = StoredMembers(), 0
    while i < len(data):
        step = next(sizes)
        members(data[i : i + step])
        i += step
    return members


def _directory(path) -> dict[int, tuple[int, int, str]]:
    with zipfile.ZipFile(path) as archive:
        return {info.header_offset: (info.CRC, info.compress_size, info.orig_filename) for info in archive.infolist()}


@pytest.mark.parametrize("chunking", ["whole", "1 byte", "odd", "random"])
def test_every_stored_member_of_an_npz_is_checked_whatever_the_chunks(tmp_path, chunking):
    path = _npz(tmp_path / "data.npz")
    data = path.read_bytes()
    rng = random.Random(1)
    sizes = {
        "whole": iter(lambda: len(data), None),
        "1 byte": iter(lambda: 1, None),
        "odd": iter(lambda: 29, None),
        "random": iter(lambda: rng.randint(1, 300), None),
    }[chunking]
    members = _scan(data, sizes)
    assert members.checked == _directory(path)
    assert members.stopped  # at the central directory


def test_zip64_headers_as_np_savez_writes_them_for_large_arrays(tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x_train.npy", "w", force_zip64=True) as member:
            member.write(b"a" * 5000)
        archive.writestr("y_train.npy", b"b" * 10)
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 18)[0] == 0xFFFFFFFF  # the sizes live in the zip64 extra
    assert _scan(data, iter(lambda: 1000, None)).checked == _directory(path)


def test_compressed_members_stop_the_scan_and_are_left_to_the_read_back(tmp_path):
    path = _npz(tmp_path / "data.npz", compressed=True)
    members = _scan(path.read_bytes(), iter(lambda: 4096, None))
    assert members.stopped and members.checked == {}
    assert modelcheck.inspect_dataset(path, 1 << 30, members.checked)["x_train"]["shape"] == [64, 4, 4, 1]


def test_a_prefix_before_the_archive_stops_the_scan(tmp_path):
    data = b"not a zip" + _npz(tmp_path / "data.npz").read_bytes()
    members = _scan(data, iter(lambda: 100, None))
    assert members.stopped and members.checked == {}


def test_a_corrupt_stored_member_is_still_refused(tmp_path):
    path = _npz(tmp_path / "data.npz")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("x_train.npy")
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len  # the member's data
    data[start + 2000] ^= 0xFF  # deep inside x_train's data, past the .npy header
    path.write_bytes(bytes(data))
    members = _scan(bytes(data), iter(lambda: 512, None))
    assert members.checked[info.header_offset][0] != info.CRC
    with pytest.raises(modelcheck.ModelRejected, match="corrupt"):
        modelcheck.inspect_dataset(path, 1 << 30, members.checked)


def test_checked_members_are_not_read_again_and_the_others_are(tmp_path, monkeypatch):
    path = _npz(tmp_path / "data.npz")
    members = _scan(path.read_bytes(), iter(lambda: 1 << 20, None))
    read: dict[str, int] = {}
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real_read(self, n)
        read[self.name] = read.get(self.name, 0) + len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with zipfile.ZipFile(path) as archive:
        modelcheck._verify_members(archive, 1 << 30, members.checked)
        assert sum(read.values()) == 0
        # a directory entry that disagrees with what was scanned (another CRC) is read back
        forged = dict(members.checked)
        first = archive.infolist()[0]
        forged[first.header_offset] = (first.CRC ^ 1, first.compress_size, first.orig_filename)
        modelcheck._verify_members(archive, 1 << 30, forged)
        assert read == {first.filename: first.file_size}
        # so is one whose local header names another member than the directory does
        forged = dict(members.checked)
        forged[first.header_offset] = (first.CRC, first.compress_size, "other.npy")
        read.clear()
        modelcheck._verify_members(archive, 1 << 30, forged)
        assert read == {first.filename: first.file_size}


def test_the_expanded_size_limit_still_holds_for_checked_members(tmp_path):
    path = _npz(tmp_path / "data.npz")
    members = _scan(path.read_bytes(), iter(lambda: 1 << 20, None))
    total = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
    with zipfile.ZipFile(path) as archive, pytest.raises(modelcheck.ModelRejected, match="limit"):
        modelcheck._verify_members(archive, total - 1, members.checked)


def test_a_data_descriptor_stops_the_scan():
    buffer = io.BytesIO()

    class Unseekable(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            return buffer.write(b)

    with zipfile.ZipFile(Unseekable(), "w") as archive:  # streaming: sizes after the data
        archive.writestr("x_train.npy", b"a" * 100)
    members = _scan(buffer.getvalue(), iter(lambda: 64, None))
    assert members.stopped and members.checked == {}


def test_a_local_name_that_differs_from_the_directory_is_still_refused(tmp_path):
    path = _npz(tmp_path / "data.npz")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("y_test.npy")
    name_at = info.header_offset + 30
    assert data[name_at : name_at + 10] == b"y_test.npy"
    data[name_at + 6] = ord("X")  # the local header says y_testXnpy
    path.write_bytes(bytes(data))
    members = _scan(bytes(data), iter(lambda: 700, None))
    assert members.checked[info.header_offset][2] == "y_testXnpy"
    with pytest.raises(modelcheck.ModelRejected):
        modelcheck.inspect_dataset(path, 1 << 30, members.checked)


def test_zipfile_still_judges_the_flags_of_a_checked_member(tmp_path):
    # an extra member whose directory entry says "strong encryption": its data was checked as it
    # streamed in, but zipfile refuses to open it, so the dataset is refused as without the scan
    path = tmp_path / "data.npz"
    arrays = dict(np.load(_npz(tmp_path / "base.npz")))
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)
        archive.writestr("notes.txt", b"hello")
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the directory entry of notes.txt, the last member
    assert data[entry + 46 : entry + 55] == b"notes.txt"
    data[entry + 8] |= 0x40
    path.write_bytes(bytes(data))
    members = _scan(bytes(data), iter(lambda: 333, None))
    assert len(members.checked) == 5
    with pytest.raises(modelcheck.ModelRejected, match="encryption"):
        modelcheck.inspect_dataset(path, 1 << 30)
    with pytest.raises(modelcheck.ModelRejected, match="encryption"):
        modelcheck.inspect_dataset(path, 1 << 30, members.checked)


def test_a_stream_of_empty_members_stops_the_scan_at_its_bound():
    from pruning_core.zipscan import MAX_MEMBERS

    empty = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    members = _scan(empty * (MAX_MEMBERS * 10), iter(lambda: 1 << 16, None))
    assert members.stopped and len(members.checked) == MAX_MEMBERS


@pytest.mark.parametrize("damage", ["zip version 6.4 needed", "a name flagged UTF-8 that is not"])
def test_directory_entries_zipfile_cannot_read_are_refused_as_corrupt(tmp_path, damage):
    path = _npz(tmp_path / "data.npz")
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    if damage.startswith("zip version"):
        data[entry + 6 : entry + 8] = struct.pack("<H", 64)
    else:
        data[entry + 8 : entry + 10] = struct.pack("<H", struct.unpack_from("<H", data, entry + 8)[0] | 0x800)
        data[entry + 46] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(modelcheck.ModelRejected, match="corrupt") as refused:
        modelcheck.inspect_dataset(path, 1 << 30)
    assert refused.value.field == "dataset"


def test_the_scan_uses_zlib_ng_s_crc_where_installed_which_agrees_with_zlib_s():
    import zlib

    from pruning_core import zipscan

    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")  # a dependency; absent only off its wheels

    assert zipscan.crc32 is zlib_ng.crc32  # the fast path is taken
    data = random.Random(0).randbytes(1 << 20)
    assert zipscan.crc32(data, 12345) == zlib.crc32(data, 12345)
