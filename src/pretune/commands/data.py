"""`pretune data download|list|where`: fetch the public data sets and show where data is looked for."""

from __future__ import annotations

import argparse
import sys
import time

from pretune.data import download as dl

DATA_DIR_HELP = (
    f"data directory (default: ${dl.ENV_DATA}, else ../shared/data in a source checkout, "
    "else ~/.cache/pretune/data)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="download the public data sets, or show where data is found")
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    get = sub.add_parser(
        "download",
        help="download a data set into the data directory",
        description="Download data sets from their official URLs, verify them and put them in place. "
        f"Files already present and verified are skipped. ${dl.ENV_MIRROR} (a base URL) replaces the "
        "origin of every URL, to use a mirror.",
    )
    get.add_argument("names", nargs="+", metavar="NAME", help=f"data set(s): {', '.join(dl.REGISTRY)}")
    get.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    get.add_argument("--force", action="store_true", help="download again even if the files are present")
    get.add_argument("--timeout", type=float, default=30, metavar="S", help="network timeout in seconds (30)")

    ls = sub.add_parser("list", help="list the data sets and whether each is in the data directory")
    ls.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)

    wh = sub.add_parser(
        "where",
        help="print the data directory (stdout) and how it was chosen (stderr)",
    )
    wh.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; returns the exit code."""
    return {"download": run_download, "list": run_list, "where": run_where}[args.action](args)


def run_download(args: argparse.Namespace) -> int:
    root, how = dl.resolve_data_dir(args.data_dir)
    datasets = [dl.get_dataset(name) for name in dict.fromkeys(args.names)]  # all names checked first
    print(f"data dir: {root} ({how})", file=sys.stderr)
    for ds in datasets:
        started = time.perf_counter()
        path = dl.download(ds.name, root, force=args.force, timeout=args.timeout)
        print(f"{ds.name}: ready in {path} ({time.perf_counter() - started:.1f}s)")
        for rel in ds.provides:
            print(f"  {root / rel}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    root, how = dl.resolve_data_dir(args.data_dir)
    print(f"data dir: {root} ({how})")
    width = max(len(name) for name in dl.REGISTRY)
    for ds in dl.REGISTRY.values():
        present, total = dl.status(ds, root)
        state = "present" if present == total else "missing" if present == 0 else f"partial {present}/{total}"
        print(f"{ds.name:<{width}}  {state:<11}  {ds.description} [{ds.source}]")
    print("fetch one with: pretune data download NAME [--data-dir DIR]")
    return 0


def run_where(args: argparse.Namespace) -> int:
    root, how = dl.resolve_data_dir(args.data_dir)
    print(root)
    print(f"chosen by: {how}", file=sys.stderr)
    return 0
