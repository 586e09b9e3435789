"""Data download: a real HTTP server on 127.0.0.1 serving fixture files, checksums, interruptions,
NSMC post-processing, data-dir resolution and the `pretune data` command."""

from __future__ import annotations

import gzip
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pretune import cli
from pretune.data import download as dl
from pretune.data.download import Dataset, RemoteFile
from pretune.errors import PretuneError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class Server(ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes); paths in ``short`` announce more bytes than they send,
    paths in ``slow`` send headers and then stall."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.slow: set[str] = set()
        self.hits: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        short = self.path in self.server.short
        self.send_header("Content-Length", str(len(body) + 5000 if short else len(body)))
        self.end_headers()
        if self.path in self.server.slow:
            self.wfile.flush()
            time.sleep(2)
            return
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True  # a short body then ends with the connection closed

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (dl.ENV_DATA, dl.ENV_MIRROR, "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                "all_proxy", "ALL_PROXY"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TEXT = "첫 줄\nsecond line\n".encode() * 50
BLOB = random.Random(0).randbytes(700_000)  # several read chunks


def tiny_registry(srv: Server, *, a: bytes = TEXT, b: bytes = BLOB) -> dict[str, Dataset]:
    """A data set of two pinned files; the server gets the bytes given (pins are for TEXT/BLOB)."""
    srv.files["/x/a.txt"] = a
    srv.files["/x/deep/b.bin"] = b
    files = (
        RemoteFile(f"{srv.base}/x/a.txt", "tiny/a.txt", sha256=sha(TEXT), size=len(TEXT)),
        RemoteFile(f"{srv.base}/x/deep/b.bin", "tiny/deep/b.bin", sha256=sha(BLOB), size=len(BLOB)),
    )
    return {"tiny": Dataset("tiny", "two fixture files", "tests", files)}


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- downloading -------------------------------------------------------------------------------


def test_download_verifies_then_skips(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reg = tiny_registry(server)
    out = dl.download("tiny", tmp_path, registry=reg)
    assert out == tmp_path / "tiny"
    assert (out / "a.txt").read_bytes() == TEXT
    assert (out / "deep" / "b.bin").read_bytes() == BLOB
    assert leftovers(tmp_path) == ["tiny/a.txt", "tiny/deep/b.bin"]  # no .partial-* files
    assert len(server.hits) == 2
    dl.download("tiny", tmp_path, registry=reg)
    assert len(server.hits) == 2  # present and verified: nothing fetched
    assert "already present, verified" in capsys.readouterr().err
    dl.download("tiny", tmp_path, registry=reg, force=True, progress=False)
    assert len(server.hits) == 4


def test_corrupt_existing_file_is_fetched_again(server: Server, tmp_path: Path) -> None:
    reg = tiny_registry(server)
    dl.download("tiny", tmp_path, registry=reg, progress=False)
    (tmp_path / "tiny" / "a.txt").write_bytes(b"truncated")
    dl.download("tiny", tmp_path, registry=reg, progress=False)
    assert (tmp_path / "tiny" / "a.txt").read_bytes() == TEXT
    assert len(server.hits) == 3


def test_checksum_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    bad = bytearray(BLOB)
    bad[1000] ^= 1  # same size, one bit different
    reg = tiny_registry(server, b=bytes(bad))
    with pytest.raises(PretuneError) as err:
        dl.download("tiny", tmp_path, registry=reg, progress=False)
    msg = str(err.value)
    assert "tiny/deep/b.bin" in msg and "sha256 mismatch" in msg
    assert sha(BLOB) in msg and sha(bytes(bad)) in msg
    assert leftovers(tmp_path) == ["tiny/a.txt"]  # the good first file stays; no b.bin, no partial


def test_connection_closed_early_leaves_nothing(server: Server, tmp_path: Path) -> None:
    reg = tiny_registry(server)
    server.short.add("/x/a.txt")
    with pytest.raises(PretuneError, match=r"connection closed after 1,000 of 6,000 bytes.*again to retry"):
        dl.download("tiny", tmp_path, registry=reg, progress=False)
    assert leftovers(tmp_path) == []


def test_timeout_leaves_nothing(server: Server, tmp_path: Path) -> None:
    reg = tiny_registry(server)
    server.slow.add("/x/a.txt")
    started = time.perf_counter()
    with pytest.raises(PretuneError, match=r"timed out.*nothing was kept.*retry"):
        dl.download("tiny", tmp_path, registry=reg, progress=False, timeout=0.3)
    assert time.perf_counter() - started < 1.5
    assert leftovers(tmp_path) == []


def test_ctrl_c_leaves_nothing(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class InterruptingBar:
        def __init__(self, *args: object, **kw: object) -> None:
            self.n = 0

        def __enter__(self) -> InterruptingBar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: int) -> None:
            self.n += 1
            if self.n == 2:  # after the first chunk reached the partial file
                raise KeyboardInterrupt

    monkeypatch.setattr(dl, "tqdm", InterruptingBar)
    reg = tiny_registry(server)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "a.txt").write_bytes(TEXT)  # already there: only b.bin is fetched
    with pytest.raises(PretuneError, match=r"tiny/deep/b.bin: download interrupted.*retry"):
        dl.download("tiny", tmp_path, registry=reg)
    assert leftovers(tmp_path) == ["tiny/a.txt"]


def test_http_error_and_unknown_name(server: Server, tmp_path: Path) -> None:
    reg = tiny_registry(server)
    del server.files["/x/a.txt"]
    with pytest.raises(PretuneError, match=r"tiny/a.txt: HTTP 404"):
        dl.download("tiny", tmp_path, registry=reg, progress=False)
    assert leftovers(tmp_path) == []
    with pytest.raises(PretuneError, match=r"unknown data set 'nope'; choose one of: tiny"):
        dl.download("nope", tmp_path, registry=reg)
    with pytest.raises(PretuneError, match=r"nsmc, tinyshakespeare"):
        dl.get_dataset("nope")


def test_mirror_replaces_the_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://raw.githubusercontent.com/e9t/nsmc/master/ratings_train.txt"
    assert dl.resolve_url(url) == url
    monkeypatch.setenv(dl.ENV_MIRROR, "http://127.0.0.1:8000/m/")
    assert dl.resolve_url(url) == "http://127.0.0.1:8000/m/e9t/nsmc/master/ratings_train.txt"
    monkeypatch.setenv(dl.ENV_MIRROR, "mirror.example.org")
    with pytest.raises(PretuneError, match="PRETUNE_DATA_MIRROR"):
        dl.resolve_url(url)


# --- NSMC post-processing ----------------------------------------------------------------------


def ratings(rows: list[tuple[int, str, int]], crlf: bool = False) -> bytes:
    nl = "\r\n" if crlf else "\n"
    lines = ["id\tdocument\tlabel"] + [f"{i}\t{doc}\t{label}" for i, doc, label in rows]
    return nl.join(lines).encode() + nl.encode()


TRAIN = [(1, "재밌다 최고", 1), (2, "지루했다...", 0), (3, "", 0), (4, '배우 연기 "굿"', 1)]
TEST = [(9, "다시 볼래요", 1), (10, "별로", 0)]


def serve_nsmc(srv: Server, monkeypatch: pytest.MonkeyPatch, train: bytes, test: bytes) -> None:
    srv.files["/e9t/nsmc/master/ratings_train.txt"] = train
    srv.files["/e9t/nsmc/master/ratings_test.txt"] = test
    monkeypatch.setenv(dl.ENV_MIRROR, srv.base)


def test_nsmc_postprocess(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_nsmc(server, monkeypatch, ratings(TRAIN), ratings(TEST, crlf=True))
    out = dl.download("nsmc", tmp_path, progress=False)
    assert out == tmp_path / "nsmc"
    train = (out / "train.tsv").read_text(encoding="utf-8")
    assert train == ratings(TRAIN).decode()
    assert (out / "test.tsv").read_bytes() == ratings(TEST)  # CRLF normalised
    for name in ("train.tsv", "test.tsv"):
        dl.check_nsmc(out / name, name)
        lines = (out / name).read_text(encoding="utf-8").splitlines()
        assert lines[0] == "id\tdocument\tlabel"
        assert all(len(row.split("\t")) == 3 and row.split("\t")[2] in "01" for row in lines[1:])
    unlabeled = gzip.decompress((out / "unlabeled.txt.gz").read_bytes()).decode()
    assert unlabeled == '재밌다 최고\n지루했다...\n배우 연기 "굿"\n'  # train text only, no empty review
    assert set(leftovers(tmp_path)) == {
        "nsmc/train.tsv", "nsmc/test.tsv", "nsmc/unlabeled.txt.gz",
        "nsmc/raw/ratings_train.txt", "nsmc/raw/ratings_test.txt",
    }  # fmt: skip
    # same input, same bytes (no time stamp in the gzip header)
    first = (out / "unlabeled.txt.gz").read_bytes()
    dl.nsmc_postprocess(tmp_path)
    assert (out / "unlabeled.txt.gz").read_bytes() == first
    hits = len(server.hits)
    dl.download("nsmc", tmp_path, progress=False)
    assert len(server.hits) == hits  # outputs present and sound: skipped
    (out / "unlabeled.txt.gz").unlink()
    dl.download("nsmc", tmp_path, progress=False)
    assert len(server.hits) == hits  # rebuilt from the verified raw files, nothing fetched
    assert (out / "unlabeled.txt.gz").read_bytes() == first


def test_nsmc_bad_layout_is_rejected(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_nsmc(server, monkeypatch, ratings([*TRAIN, (5, "평점 5", 5)]), ratings(TEST))
    with pytest.raises(PretuneError, match=r"nsmc/raw/ratings_train.txt:6: label '5' is not one of"):
        dl.download("nsmc", tmp_path, progress=False)
    assert leftovers(tmp_path) == []
    serve_nsmc(server, monkeypatch, b"<html>rate limited</html>\n", ratings(TEST))
    with pytest.raises(PretuneError, match=r"ratings_train.txt:1: header is"):
        dl.download("nsmc", tmp_path, progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", list(dl.REGISTRY))
def test_registry_checks_accept_the_shared_copies(name: str) -> None:
    ds = dl.REGISTRY[name]
    if not all((SHARED / rel).is_file() for rel in ds.provides):
        pytest.skip(f"{name} not in {SHARED} (see its README)")
    if ds.verify_outputs is not None:
        ds.verify_outputs(SHARED)  # nsmc: the shared copy has the official layout
    else:
        for spec in ds.files:
            assert dl.verify_problem(spec, SHARED / spec.path) is None


# --- where data lives --------------------------------------------------------------------------


def test_require_names_the_command(tmp_path: Path) -> None:
    present = tmp_path / "here.txt"
    present.write_text("x")
    assert dl.require(present, "nsmc") == present
    with pytest.raises(PretuneError) as err:
        dl.require(tmp_path / "nsmc" / "train.tsv", "nsmc")
    assert str(err.value) == (
        f"{tmp_path / 'nsmc' / 'train.tsv'}: not found; fetch it with: "
        f"pretune data download nsmc --data-dir {tmp_path}"
    )


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if dl.shared_data_dir() is not None:  # a source checkout with ../shared/data
        assert dl.data_dir() == SHARED.resolve()
    monkeypatch.setenv(dl.ENV_DATA, str(tmp_path / "env"))
    assert dl.data_dir() == tmp_path / "env"
    assert dl.resolve_data_dir(tmp_path / "cli") == (tmp_path / "cli", "--data-dir")  # beats the env var
    monkeypatch.delenv(dl.ENV_DATA)
    monkeypatch.setattr(dl, "shared_data_dir", lambda: None)  # as if installed from a wheel
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.data_dir() == tmp_path / "xdg" / "pretune" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.resolve_data_dir() == (
        tmp_path / "home" / ".cache" / "pretune" / "data",
        "default user cache (~/.cache/pretune/data)",
    )


# --- the command line --------------------------------------------------------------------------


def test_cli_download_list_where(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    serve_nsmc(server, monkeypatch, ratings(TRAIN), ratings(TEST))
    root = tmp_path / "data"
    assert cli.main(["data", "download", "nsmc", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"nsmc: ready in {root / 'nsmc'}" in out
    assert (root / "nsmc" / "unlabeled.txt.gz").is_file()

    assert cli.main(["data", "list", "--data-dir", str(root)]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("nsmc") and "present" in line for line in listing.splitlines())
    assert any(line.startswith("kornli") and "missing" in line for line in listing.splitlines())

    monkeypatch.setenv(dl.ENV_DATA, str(root))
    assert cli.main(["data", "where"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{root}\n" and "PRETUNE_DATA" in captured.err


def test_cli_errors_exit_2(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["data", "download", "nope", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pretune data: error: unknown data set 'nope'; choose one of: nsmc,")
    assert "\n" not in err.rstrip("\n")
    monkeypatch.setenv(dl.ENV_MIRROR, server.base)  # serves nothing: HTTP 404
    assert cli.main(["data", "download", "nsmc", "--data-dir", str(tmp_path)]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_never_writes_into_shared_or_read_only_dirs(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_nsmc(server, monkeypatch, ratings(TRAIN), ratings(TEST))
    shared = tmp_path / "shared" / "data"
    dl.download("nsmc", shared, progress=False)
    before = {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    monkeypatch.setattr(dl, "shared_data_dir", lambda: shared.resolve())
    dl.download("nsmc", shared, progress=False)  # present: nothing to write, fine
    with pytest.raises(PretuneError, match=r"shared data folder .* pass --data-dir"):
        dl.download("nsmc", shared, force=True, progress=False)
    (shared / "nsmc" / "unlabeled.txt.gz").unlink()
    before.pop(shared / "nsmc" / "unlabeled.txt.gz")
    with pytest.raises(PretuneError, match=r"shared data folder"):
        dl.download("nsmc", shared, progress=False)  # even just rebuilding
    assert {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()} == before

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # no write bits: refused even when running as root
    try:
        with pytest.raises(PretuneError, match=r"cannot write nsmc under .*locked: read-only"):
            dl.download("nsmc", locked, progress=False)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_the_real_shared_folder_is_refused() -> None:
    shared = dl.shared_data_dir()
    if shared is None:
        pytest.skip("not a source checkout with ../shared/data")
    for ds in dl.REGISTRY.values():
        with pytest.raises(PretuneError, match="shared data folder"):
            dl.check_writable(shared, ds)
