"""Where the data lives, and how to fetch the public data sets the demo and benchmarks use.

Resolution of the data directory (:func:`data_dir`): ``--data-dir`` if given, else ``$PRETUNE_DATA``,
else ``<repo>/../shared/data`` when running from a source checkout that has one, else the user cache
``$XDG_CACHE_HOME/pretune/data`` (``~/.cache/pretune/data``).

:func:`download` fetches a registered data set with ``urllib`` into that directory. Each file is
streamed to ``.partial-<name>`` beside its target, verified (size and sha256 where pinned, else a
layout check), then renamed into place, so a file at a target path is always complete. Any failure
(a checksum mismatch, a connection closed early, a timeout, Ctrl-C) deletes the partial file and
raises :class:`PretuneError` with a retry hint. ``$PRETUNE_DATA_MIRROR`` (a base URL) replaces the
origin of every URL, for a mirror or a local test server. The checkout's ``../shared/data`` is
read-only reference data: downloads never write there (pass ``--data-dir`` to fetch elsewhere).

**Checksums.** Only files whose bytes could be confirmed are pinned (``tinyshakespeare``). The NSMC,
KorNLI and KorSTS files could not be fetched where this registry was written, so their ``sha256`` and
``size`` are ``None``: "not pinned, verified by a layout check" (header, column count, label values),
which catches truncation, HTML error pages and wrong files, but not a subtly altered row.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from pretune.errors import PretuneError, where
from pretune.io import atomic_path

ENV_DATA = "PRETUNE_DATA"
ENV_MIRROR = "PRETUNE_DATA_MIRROR"
CHUNK = 256 * 1024

Check = Callable[[Path, str], None]
"""A layout check: ``check(path, name)`` raises :class:`PretuneError` (naming ``name``) if wrong."""


# --- where the data lives ----------------------------------------------------------------------


def shared_data_dir() -> Path | None:
    """``<repo>/../shared/data`` when this package runs from a source checkout and that folder exists.

    The repo root is the directory holding ``pyproject.toml`` above ``src/pretune``; an installed
    package (site-packages) has none, and gets ``None``.
    """
    package = Path(__file__).resolve().parents[1]  # .../src/pretune
    if package.parent.name != "src":
        return None
    return shared_beside(package.parent.parent)


def shared_beside(repo: Path) -> Path | None:
    """``repo/../shared/data`` with symbolic links resolved (``../shared`` is often a link), when
    ``repo`` is a source checkout and that folder exists. Resolved, so that the write guard
    (:func:`check_writable`), which compares resolved paths, also fires through a link."""
    shared = repo.parent / "shared" / "data"
    if (repo / "pyproject.toml").is_file() and shared.is_dir():
        return shared.resolve()
    return None


def cache_data_dir() -> Path:
    """``$XDG_CACHE_HOME/pretune/data`` (an absolute XDG_CACHE_HOME only), else ``~/.cache/pretune/data``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "pretune" / "data"


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The data directory (absolute) and a few words on how it was chosen; a file there is an error."""
    if explicit is not None and str(explicit) != "":
        return _not_a_file(Path(explicit).expanduser().absolute(), f"--data-dir {explicit}"), "--data-dir"
    env = os.environ.get(ENV_DATA, "")
    if env:
        return _not_a_file(Path(env).expanduser().absolute(), f"${ENV_DATA} {env}"), f"environment variable {ENV_DATA}"
    shared = shared_data_dir()
    if shared is not None:
        return shared, "source checkout: ../shared/data beside the repository"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    how = "$XDG_CACHE_HOME" if xdg and os.path.isabs(xdg) else "~/.cache"
    return cache_data_dir(), f"default user cache ({how}/pretune/data)"


def _not_a_file(path: Path, given: str) -> Path:
    if path.exists() and not path.is_dir():
        raise PretuneError(f"{given}: is a file, not a directory")
    return path


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit`` (``--data-dir``), else ``$PRETUNE_DATA``, else the checkout's ``../shared/data``, else the cache."""
    return resolve_data_dir(explicit)[0]


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: official URL, target path relative to the data dir, and how to verify it.

    ``sha256`` / ``size`` ``None`` means not pinned; ``check`` then is what verifies the file.
    """

    url: str
    path: str
    sha256: str | None = None
    size: int | None = None
    check: Check | None = None


@dataclass(frozen=True)
class Dataset:
    """A downloadable data set: its files, and an optional post-processing step.

    ``postprocess(root)`` builds ``outputs`` (paths relative to the data dir) from the downloaded
    files, each written atomically; ``verify_outputs(root)`` raises :class:`PretuneError` if the
    outputs present are not sound. Without post-processing the files themselves are the outputs.
    All paths start with ``<name>/``.
    """

    name: str
    description: str
    source: str
    files: tuple[RemoteFile, ...]
    outputs: tuple[str, ...] = ()
    postprocess: Callable[[Path], None] | None = None
    verify_outputs: Callable[[Path], None] | None = None

    @property
    def provides(self) -> tuple[str, ...]:
        """The files a user of the data set reads, relative to the data dir."""
        return self.outputs or tuple(f.path for f in self.files)


def _open_lines(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line number, text without line ending or BOM), decoding UTF-8 line by line."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise PretuneError(f"{where(name, lineno)}: not valid UTF-8 ({exc.reason})") from None


def tsv_check(
    header: tuple[str, ...],
    *,
    label_col: int | None = None,
    labels: frozenset[str] | None = None,
    number_col: int | None = None,
) -> Check:
    """A layout check for a TSV file: this exact header, that many fields on every row, at least
    one row, labels in ``labels`` (column ``label_col``) and a number in ``number_col``."""
    width = len(header)

    def check(path: Path, name: str) -> None:
        rows = 0
        for lineno, text in _open_lines(path, name):
            fields = text.split("\t")
            if lineno == 1:
                if tuple(f.strip() for f in fields) != header:
                    raise PretuneError(
                        f"{where(name, 1)}: header is {text[:80]!r}, expected {chr(9).join(header)!r} "
                        "(not the expected file, or an error page?)"
                    )
                continue
            if len(fields) != width:
                raise PretuneError(f"{where(name, lineno)}: {len(fields)} fields, expected {width}")
            if label_col is not None and labels is not None and fields[label_col].strip() not in labels:
                raise PretuneError(
                    f"{where(name, lineno)}: label {fields[label_col][:20]!r} is not one of {sorted(labels)}"
                )
            if number_col is not None:
                try:
                    float(fields[number_col])
                except ValueError:
                    raise PretuneError(
                        f"{where(name, lineno)}: {header[number_col]} {fields[number_col][:20]!r} is not a number"
                    ) from None
            rows += 1
        if rows == 0:
            raise PretuneError(f"{name}: no rows after the header")

    return check


NSMC_HEADER = ("id", "document", "label")
check_nsmc = tsv_check(NSMC_HEADER, label_col=2, labels=frozenset({"0", "1"}))
check_kornli = tsv_check(
    ("sentence1", "sentence2", "gold_label"),
    label_col=2,
    labels=frozenset({"entailment", "neutral", "contradiction"}),
)
check_korsts = tsv_check(("genre", "filename", "year", "id", "score", "sentence1", "sentence2"), number_col=4)

NSMC_URL = "https://raw.githubusercontent.com/e9t/nsmc/master"
NSMC_RAW = {"train.tsv": "nsmc/raw/ratings_train.txt", "test.tsv": "nsmc/raw/ratings_test.txt"}
KORNLU_URL = "https://raw.githubusercontent.com/kakaobrain/KorNLUDatasets/master"


def nsmc_postprocess(root: Path) -> None:
    """Build ``nsmc/train.tsv`` / ``test.tsv`` from the official ``ratings_*.txt`` (same layout,
    line endings normalised to LF) and ``nsmc/unlabeled.txt.gz``: the text of every non-empty
    train review, one per line (the official files are random samples with no document order, so
    there are no blank document separators). Test reviews never enter the unlabeled corpus."""
    for out, raw in NSMC_RAW.items():
        with atomic_path(root / "nsmc" / out) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as dst:
            for _, text in _open_lines(root / raw, raw):
                dst.write(text + "\n")
    with atomic_path(root / "nsmc" / "unlabeled.txt.gz") as tmp, tmp.open("wb") as fh:
        # mtime=0 and no file name: the same input gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            for lineno, text in _open_lines(root / NSMC_RAW["train.tsv"], NSMC_RAW["train.tsv"]):
                review = text.split("\t")[1].strip() if lineno > 1 else ""
                if review:
                    gz.write(review.encode("utf-8") + b"\n")


def nsmc_verify(root: Path) -> None:
    """train.tsv / test.tsv pass the NSMC layout check; unlabeled.txt.gz is a non-empty gzip file."""
    for out in NSMC_RAW:
        check_nsmc(root / "nsmc" / out, f"nsmc/{out}")
    unlabeled = root / "nsmc" / "unlabeled.txt.gz"
    with unlabeled.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b" or unlabeled.stat().st_size < 30:
            raise PretuneError("nsmc/unlabeled.txt.gz: not a gzip file, or empty")


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "nsmc",
            "Naver movie-review sentiment (Korean): train.tsv, test.tsv (id, document, label 0/1) "
            "and unlabeled.txt.gz (the train reviews' text) for pretraining",
            "github.com/e9t/nsmc, CC0 1.0",
            tuple(
                RemoteFile(f"{NSMC_URL}/{Path(raw).name}", raw, sha256=None, size=None, check=check_nsmc)
                for raw in NSMC_RAW.values()
            ),
            outputs=("nsmc/train.tsv", "nsmc/test.tsv", "nsmc/unlabeled.txt.gz"),
            postprocess=nsmc_postprocess,
            verify_outputs=nsmc_verify,
        ),
        Dataset(
            "tinyshakespeare",
            "Tiny Shakespeare (English): input.txt, 1.1 MB of plain text for GPT pretraining tests",
            "github.com/karpathy/char-rnn, public domain",
            (
                RemoteFile(
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    "tinyshakespeare/input.txt",
                    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    size=1_115_394,
                ),
            ),
        ),
        Dataset(
            "korsts",
            "KorSTS similarity (Korean): sts-train/dev/test.tsv, score 0-5 with sentence1/sentence2",
            "github.com/kakaobrain/KorNLUDatasets, CC BY-SA 4.0",
            tuple(
                RemoteFile(f"{KORNLU_URL}/KorSTS/{n}", f"korsts/{n}", check=check_korsts)
                for n in ("sts-train.tsv", "sts-dev.tsv", "sts-test.tsv")
            ),
        ),
        Dataset(
            "kornli",
            "KorNLI (Korean NLI): xnli.dev.ko.tsv, xnli.test.ko.tsv (sentence1, sentence2, gold_label)",
            "github.com/kakaobrain/KorNLUDatasets, CC BY-SA 4.0",
            tuple(
                RemoteFile(f"{KORNLU_URL}/KorNLI/{n}", f"kornli/{n}", check=check_kornli)
                for n in ("xnli.dev.ko.tsv", "xnli.test.ko.tsv")
            ),
        ),
    ]
}
"""The data sets :func:`download` knows.

``nsmc`` fetches the official ``ratings_train.txt`` / ``ratings_test.txt`` (150,000 / 50,000 rows,
the official random sample) and keeps them in ``nsmc/raw/``. The copy in the shared data folder was
built from the raw review crawl instead (same layout and labelling rules, a different sample), so
its unlabeled corpus is larger (662k reviews of all ratings vs. about 150k train reviews here):
numbers from the two copies are close but not identical. The NSMC and KorNLU files are not pinned
(``sha256=None``): see the module docstring.
"""


def get_dataset(name: str, registry: Mapping[str, Dataset] = REGISTRY) -> Dataset:
    """The registered data set ``name``; a :class:`PretuneError` listing valid names if unknown."""
    if name not in registry:
        raise PretuneError(f"unknown data set {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


def status(dataset: Dataset, root: Path) -> tuple[int, int]:
    """(files present, files provided) of ``dataset`` in data dir ``root`` (existence only)."""
    present = sum((root / rel).is_file() for rel in dataset.provides)
    return present, len(dataset.provides)


# --- downloading -------------------------------------------------------------------------------


def resolve_url(url: str, mirror: str | None = None) -> str:
    """``url`` with its origin replaced by ``mirror`` (default ``$PRETUNE_DATA_MIRROR``) if set.

    ``https://raw.githubusercontent.com/e9t/nsmc/master/x`` with mirror ``http://host:8000/m``
    becomes ``http://host:8000/m/e9t/nsmc/master/x``.
    """
    mirror = os.environ.get(ENV_MIRROR, "") if mirror is None else mirror
    if not mirror:
        return url
    if urllib.parse.urlsplit(mirror).scheme not in ("http", "https", "file"):
        raise PretuneError(
            f"{ENV_MIRROR}={mirror!r}: expected a base URL such as https://mirror.example.org/pretune"
        )
    parts = urllib.parse.urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, TimeoutError)
    ):
        return f"no data for {timeout:g} s (timed out)"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed early"
    return str(exc) or type(exc).__name__


def _stream(url: str, out: BinaryIO, label: str, retry: str, timeout: float, progress: bool) -> str:
    """Copy ``url`` into ``out``; return the sha256. Network failures become :class:`PretuneError`."""
    digest = hashlib.sha256()
    got, expected = 0, None
    mirror = f" (mirror from ${ENV_MIRROR})" if os.environ.get(ENV_MIRROR) else ""
    request = urllib.request.Request(url, headers={"User-Agent": "pretune-data/1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length", "")
            expected = int(length) if length.strip().isdigit() else None
            with tqdm(
                total=expected,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
                file=sys.stderr,
                leave=False,
            ) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise PretuneError(f"{label}: HTTP {exc.code} {exc.reason} for {url}{mirror}; {retry}") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, disk full
        of = f" of {_mb(expected)}" if expected else ""
        raise PretuneError(
            f"{label}: download from {url}{mirror} failed after {_mb(got)}{of}: {_reason(exc, timeout)}; "
            f"nothing was kept; {retry}"
        ) from exc
    except KeyboardInterrupt as exc:
        raise PretuneError(
            f"{label}: download interrupted after {_mb(got)}; nothing was kept; {retry}"
        ) from exc
    if expected is not None and got != expected:
        raise PretuneError(
            f"{label}: connection closed after {got:,} of {expected:,} bytes from {url}{mirror}; "
            f"nothing was kept; {retry}"
        )
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_problem(spec: RemoteFile, path: Path) -> str | None:
    """Why the file at ``path`` is not a good copy of ``spec`` (size, sha256, layout), or None."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size {size:,} bytes, expected {spec.size:,}"
    if spec.sha256 is not None:
        actual = _sha256(path)
        if actual != spec.sha256.lower():
            return f"sha256 {actual}, expected {spec.sha256}"
    if spec.check is not None:
        try:
            spec.check(path, spec.path)
        except PretuneError as exc:
            return f"layout check failed: {exc}"
    return None


def _fetch(spec: RemoteFile, root: Path, dataset: str, timeout: float, progress: bool) -> None:
    """Download one file beside its target, verify it, and rename it onto the target."""
    target = root / spec.path
    url = resolve_url(spec.url)
    retry = f"run `pretune data download {dataset}` again to retry"
    with atomic_path(target, what=f"choose a writable --data-dir (or set {ENV_DATA})") as partial:
        with partial.open("wb") as out:
            actual = _stream(url, out, spec.path, retry, timeout, progress)
        _verify_download(spec, partial, actual, url, retry)


def _verify_download(spec: RemoteFile, partial: Path, actual: str, url: str, retry: str) -> None:
    size = partial.stat().st_size
    if spec.size is not None and size != spec.size:
        raise PretuneError(
            f"{spec.path}: got {size:,} bytes from {url}, expected {spec.size:,}; the file was deleted; {retry}"
        )
    if spec.sha256 is not None and actual != spec.sha256.lower():
        raise PretuneError(
            f"{spec.path}: sha256 mismatch for {url}: expected {spec.sha256}, got {actual}; the file was "
            "deleted (a changed upstream file, or a broken mirror or proxy)"
        )
    if spec.check is not None:
        try:
            spec.check(partial, spec.path)
        except PretuneError as exc:
            raise PretuneError(f"{exc} (downloaded from {url}; the file was deleted)") from exc


def check_writable(root: Path, dataset: Dataset) -> None:
    """Refuse to write into the checkout's shared data folder (read-only reference copies) or into a
    directory with no write permission bits (checked by mode too, since root ignores permissions)."""
    resolved = root.resolve()
    shared = shared_data_dir()
    if shared is not None and (resolved == shared or shared in resolved.parents):
        raise PretuneError(
            f"{root} is the source checkout's shared data folder (read-only reference copies) and "
            f"{dataset.name} would have to be written there; pass --data-dir DIR or set {ENV_DATA}"
        )
    dirs = {(root / spec.path).parent for spec in dataset.files}
    dirs |= {(root / rel).parent for rel in dataset.outputs}
    for directory in sorted(dirs):
        existing = next(d for d in (directory, *directory.parents) if d.exists())
        mode = existing.stat().st_mode
        if not existing.is_dir() or not mode & 0o222 or not os.access(existing, os.W_OK | os.X_OK):
            raise PretuneError(
                f"cannot write {dataset.name} under {existing}: read-only or not a directory; "
                f"pass --data-dir DIR or set {ENV_DATA}"
            )


def download(
    name: str,
    dest_root: str | os.PathLike[str],
    *,
    registry: Mapping[str, Dataset] = REGISTRY,
    force: bool = False,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Fetch data set ``name`` into ``dest_root`` (the data dir); return ``dest_root/name``.

    Files already present and verified are skipped (with post-processing, present and sound
    outputs skip the whole data set) unless ``force``. Nothing is ever written into the checkout's
    shared data folder or a read-only directory (:func:`check_writable`). ``progress`` shows a tqdm
    bar and a line per file on stderr; ``timeout`` (seconds) bounds the connection and every read.
    """
    dataset = get_dataset(name, registry)
    root = Path(dest_root).expanduser()

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr)

    if dataset.outputs and not force and all((root / rel).is_file() for rel in dataset.outputs):
        try:
            if dataset.verify_outputs is not None:
                dataset.verify_outputs(root)
        except PretuneError as exc:
            say(f"{name}: rebuilding, the files present are not sound: {exc}")
        else:
            say(f"{name}: already present in {root / name}")
            return root / name
    writable = False
    for spec in dataset.files:
        target = root / spec.path
        if target.is_file() and not force:
            problem = verify_problem(spec, target)
            if problem is None:
                say(f"{spec.path}: already present, verified")
                continue
            say(f"{spec.path}: downloading again ({problem})")
        if not writable:
            check_writable(root, dataset)
            writable = True
        _fetch(spec, root, name, timeout, progress)
        say(f"{spec.path}: downloaded ({_mb(target.stat().st_size)})")
    if dataset.postprocess is not None:  # outputs missing, unsound, forced, or inputs new
        if not writable:
            check_writable(root, dataset)
        say(f"{name}: building {', '.join(Path(rel).name for rel in dataset.outputs)}")
        try:
            dataset.postprocess(root)
        except OSError as exc:
            raise PretuneError(f"{name}: post-processing in {root} failed: {exc}") from exc
    return root / name


def require(
    path: str | os.PathLike[str], dataset: str, *, registry: Mapping[str, Dataset] = REGISTRY
) -> Path:
    """Return ``path`` if it exists, else raise :class:`PretuneError` naming the command that fetches it."""
    path = Path(path)
    if path.exists():
        return path
    root = path.parent
    ds = registry.get(dataset)
    candidates = (*ds.provides, *(f.path for f in ds.files)) if ds is not None else ()
    for rel in candidates:
        parts = Path(rel).parts
        if len(path.parts) > len(parts) and path.parts[-len(parts) :] == parts:
            root = Path(*path.parts[: -len(parts)])
            break
    else:
        for parent in path.parents:
            if parent.name == dataset:
                root = parent.parent
                break
    raise PretuneError(
        f"{path}: not found; fetch it with: pretune data download {dataset} --data-dir {shlex.quote(str(root))}"
    )
