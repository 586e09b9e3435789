"""Reading raw corpora: text, gzip and JSON lines, documents, and errors that name file:line."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

from pretune.data.corpus import ReadStats, check_paths, iter_documents, iter_lines, iter_texts
from pretune.errors import PretuneError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NSMC_UNLABELED = DATA / "nsmc" / "unlabeled.txt.gz"


def write(path: Path, data: bytes) -> Path:
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def test_txt_lines_numbered_without_newlines(tmp_path: Path) -> None:
    # BOM on the first line and CRLF endings are dropped; inner whitespace is kept
    p = write(tmp_path / "a.txt", "\ufeff첫 줄\r\n\n  셋째 줄  \nlast".encode())
    assert list(iter_lines(p)) == [(1, "첫 줄"), (2, ""), (3, "  셋째 줄  "), (4, "last")]


def test_gz_reads_like_txt(tmp_path: Path) -> None:
    text = "영화 최고\n\n배우 연기 좋다\n".encode()
    plain = list(iter_lines(write(tmp_path / "a.txt", text)))
    gz = list(iter_lines(write(tmp_path / "a.txt.gz", text)))
    assert gz == plain == [(1, "영화 최고"), (2, ""), (3, "배우 연기 좋다")]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_jsonl_text_field(tmp_path: Path, name: str) -> None:
    rows = [{"text": "하나\n둘"}, {"text": "   "}, {"text": "셋", "id": 3}]
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n"
    p = write(tmp_path / name, body.encode())
    assert list(iter_lines(p)) == [(1, "하나\n둘"), (2, ""), (3, "셋")]
    assert list(iter_documents(p)) == [["하나", "둘"], ["셋"]]
    assert list(iter_texts(p)) == ["하나\n둘", "셋"]


def test_documents_split_on_blank_lines_and_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", b"\n\ns1\n s2 \n\n\n   \nt1\n")
    b = write(tmp_path / "b.txt.gz", b"u1\n\nv1\nv2")
    assert list(iter_documents([a, b])) == [["s1", "s2"], ["t1"], ["u1"], ["v1", "v2"]]
    assert list(iter_texts([a, b])) == ["s1", " s2 ", "t1", "u1", "v1", "v2"]


def test_non_utf8_error_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.txt", "좋다\nok\n".encode() + b"caf\xe9\nend\n")
    with pytest.raises(PretuneError, match=r"bad\.txt:3: not valid UTF-8.*--skip-bad-lines"):
        list(iter_lines(p))


def test_non_utf8_in_gzip_error_names_line(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.txt.gz", b"a\nb\n\xff\xfe\n")
    with pytest.raises(PretuneError, match=r"bad\.txt\.gz:3: not valid UTF-8"):
        list(iter_texts(p))


def test_skip_bad_lines_counts(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.txt", b"one\n\xff two\nthree\n\x80\n")
    stats = ReadStats()
    assert list(iter_lines(p, skip_bad_lines=True, stats=stats)) == [(1, "one"), (3, "three")]
    assert stats == ReadStats(lines=4, bad_lines=2)


def test_malformed_jsonl_names_line(tmp_path: Path) -> None:
    p = write(tmp_path / "c.jsonl", b'{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(PretuneError, match=r"c\.jsonl:2: malformed JSON"):
        list(iter_lines(p))
    q = write(tmp_path / "d.jsonl", b'{"text": "ok"}\n\n{"body": "no text"}\n')
    with pytest.raises(PretuneError, match=r'd\.jsonl:3: JSON record has no "text" field'):
        list(iter_documents(q))
    stats = ReadStats()
    assert list(iter_texts(q, skip_bad_lines=True, stats=stats)) == ["ok"]
    assert stats.bad_lines == 1


def test_missing_file_and_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(PretuneError, match=r"nope\.txt: no such file"):
        list(iter_lines(tmp_path / "nope.txt"))
    with pytest.raises(PretuneError, match="is a directory"):
        list(iter_lines(tmp_path))


def test_check_paths(tmp_path: Path) -> None:
    with pytest.raises(PretuneError, match="no input files"):
        check_paths([])
    good = write(tmp_path / "good.txt", b"text\n")
    with pytest.raises(PretuneError, match=r"not found: .*missing\.txt"):
        check_paths([good, tmp_path / "missing.txt"])
    empty = write(tmp_path / "empty.txt", b"")
    blank = write(tmp_path / "blank.txt.gz", b"\n \n\n")
    with pytest.raises(PretuneError, match=r"empty.*empty\.txt, .*blank\.txt\.gz"):
        check_paths([empty, blank])
    assert check_paths([empty, str(good)]) == [empty, good]  # one empty file among others is fine


def test_real_nsmc_documents_stream() -> None:
    if not NSMC_UNLABELED.exists():
        pytest.skip(f"NSMC corpus not found at {NSMC_UNLABELED} (see shared/data/README.md)")
    docs = list(itertools.islice(iter_documents(NSMC_UNLABELED), 3))
    with gzip.open(NSMC_UNLABELED, "rt", encoding="utf-8") as fh:
        head = [line.rstrip("\n") for line in itertools.islice(fh, 2000)]
    expected, doc = [], []
    for line in head:
        if line.strip():
            doc.append(line.strip())
        elif doc:
            expected.append(doc)
            doc = []
    assert len(docs) == 3 and docs == expected[:3]
    assert all(len(d) > 1 for d in docs)  # movies with several reviews each
