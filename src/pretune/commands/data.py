"""`pretune data download|list|where`: fetch the public data sets and show where data is looked for."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from pretune.data import download as dl
from pretune.settings import add_command, positive, require, setting

DATA_DIR_HELP = (
    f"data directory (default: ${dl.ENV_DATA}, else ../shared/data in a source checkout, "
    "else ~/.cache/pretune/data)"
)


@dataclass
class DownloadSettings:
    names: list[str] | None = setting(None, positional=True, help=f"data set(s): {', '.join(dl.REGISTRY)}")
    data_dir: str | None = setting(None, metavar="DIR", help=DATA_DIR_HELP)
    force: bool = setting(False, help="download again even if the files are present")
    timeout: float = setting(30.0, metavar="S", check=positive, help="network timeout in seconds")


@dataclass
class WhereSettings:
    data_dir: str | None = setting(None, metavar="DIR", help=DATA_DIR_HELP)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="download the public data sets, or show where data is found")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(sub, "download", DownloadSettings, run_download, help="download a data set into the data directory",
                description="Download data sets from their official URLs, verify them and put them in place. "
                f"Files already present and verified are skipped. ${dl.ENV_MIRROR} (a base URL) replaces the "
                "origin of every URL, to use a mirror.")
    add_command(sub, "list", WhereSettings, run_list, help="list the data sets and whether each is in the data directory")
    add_command(sub, "where", WhereSettings, run_where, help="print the data directory (stdout) and how it was chosen (stderr)")


def run_download(args: DownloadSettings) -> int:
    require(args, "names")
    root, how = dl.resolve_data_dir(args.data_dir)
    datasets = [dl.get_dataset(name) for name in dict.fromkeys(args.names)]  # all names checked first
    print(f"data dir: {root} ({how})")
    for ds in datasets:
        started = time.perf_counter()
        path = dl.download(ds.name, root, force=args.force, timeout=args.timeout)
        print(f"{ds.name}: ready in {path} ({time.perf_counter() - started:.1f}s)")
        for rel in ds.provides:
            print(f"  {root / rel}")
    return 0


def run_list(args: WhereSettings) -> int:
    root, how = dl.resolve_data_dir(args.data_dir)
    print(f"data dir: {root} ({how})")
    width = max(len(name) for name in dl.REGISTRY)
    for ds in dl.REGISTRY.values():
        present, total = dl.status(ds, root)
        state = "present" if present == total else "missing" if present == 0 else f"partial {present}/{total}"
        print(f"{ds.name:<{width}}  {state:<11}  {ds.description} [{ds.source}]")
    print("fetch one with: pretune data download NAME [--data-dir DIR]")
    return 0


def run_where(args: WhereSettings) -> int:
    root, how = dl.resolve_data_dir(args.data_dir)
    print(root)
    print(f"chosen by: {how}", file=sys.stderr)
    return 0
