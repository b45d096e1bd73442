"""List and remove what folder data sets keep on disk: the raw centre-crop caches (image_cache.py) and
the JPEG training stores (jpeg_store.py).

    python -m benchmark.tools.image_caches list [DIR ...]
    python -m benchmark.tools.image_caches remove KEY [DIR ...] [--dry-run]
    python -m benchmark.tools.image_caches remove --all [DIR ...] [--dry-run]
    python -m benchmark.tools.image_caches remove --unused-days N [DIR ...] [--dry-run]

DIR defaults to the folders the suite itself would use: $CIL_IMAGE_CACHE when set, else the .cache
folder of every ImageNet folder found under $CIL_DATA_ROOT (default `data`) — ROOT/.cache,
ROOT/imagenet100/.cache and ROOT/imagenet1000/.cache, those that exist (image_cache.cache_dir_for).

A cache is named <split>-<key>; KEY may be that name, the 16-hex-digit key, or a prefix of either that
matches one cache only. `list` shows, per cache: kind, split, images, bytes on disk, when it was built
(the manifest's time), when it was last opened (the .used file's time), whether a process has it open
now, and whether its files are whole (manifest present, data file of the size the header or index
says; the source files are not checked here, opening the cache does that). `remove` deletes every
file of a cache (data, index, manifest, locks, a killed build's temporaries) unless a process has it
open or is building it: it takes the cache's build and use locks without waiting, as image_cache.py
describes, so a run can never lose its cache under it. --unused-days N removes the caches not opened
for N days (built time when never opened).

Exit status: 0 done; 1 some cache was in use and kept; 2 bad usage or no cache matched.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data import imageset
from benchmark.data.image_cache import CACHE_ENV, NOT_BUILT, cache_dir_for, npy_mismatch
from benchmark.data.jpeg_store import stored_mismatch
from benchmark.files import TEMPORARY_SUFFIX

DATASETS = ("imagenet100", "imagenet1000")
STEM = re.compile(r"(?P<split>.+)-(?P<key>[0-9a-f]{16})")
KINDS = {"centre_crops": "raw centre crops", "jpeg_store": "JPEG store"}
IN_USE_FIX = "stop the runs using it (or wait for them to end), then run remove again"


@dataclass
class Cache:
    folder: Path
    stem: str
    files: list[Path] = field(default_factory=list)

    @property
    def split(self) -> str:
        return STEM.fullmatch(self.stem)["split"]

    @property
    def key(self) -> str:
        return STEM.fullmatch(self.stem)["key"]

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.stem}{suffix}"

    def manifest(self) -> dict | None:
        try:
            return json.loads(self.path(".json").read_text())
        except (OSError, ValueError):
            return None

    def kind(self) -> str:
        manifest = self.manifest()
        if manifest is not None:
            return KINDS.get(manifest.get("kind", "centre_crops"), manifest.get("kind", "?"))
        return "JPEG store" if self.path(".jpegs").exists() else "raw centre crops" if self.path(".npy").exists() else "?"

    def size(self) -> int:
        return sum(path.stat().st_size for path in self.files if path.exists())

    def built(self) -> float | None:
        manifest = self.path(".json")
        return manifest.stat().st_mtime if manifest.exists() else None

    def last_used(self) -> float | None:
        used = self.path(".used")
        return used.stat().st_mtime if used.exists() else None

    def idle_since(self) -> float:
        return self.last_used() or self.built() or max((p.stat().st_mtime for p in self.files if p.exists()), default=0)

    def problem(self) -> str | None:
        """Why the cache's files are not whole (None: they are)."""
        manifest = self.manifest()
        if manifest is None:
            return "unreadable manifest" if self.path(".json").exists() else "no manifest (an interrupted build)"
        if manifest.get("kind", "centre_crops") == "jpeg_store":
            reason = stored_mismatch(self.path(".jpegs"), self.path(".index.npz"), manifest.get("count", -1),
                                     manifest.get("side", -1))
        else:
            reason = npy_mismatch(self.path(".npy"), manifest.get("shape", []))
        return "data file missing" if reason == NOT_BUILT else reason

    def busy(self) -> str | None:
        """'building' or 'in use' when another process holds the build or the use lock, else None."""
        for suffix, what in ((".lock", "building"), (".used", "in use")):
            if not self.path(suffix).exists():
                continue
            with open(self.path(suffix), "r") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return what
        return None


def default_dirs() -> list[Path]:
    if os.environ.get(CACHE_ENV, "").strip():
        found = cache_dir_for(".")
        return [found] if found is not None and found.is_dir() else []
    root = Path(os.environ.get("CIL_DATA_ROOT", "data"))
    folders = {folder for name in DATASETS for folder in imageset.candidate_dirs(name, root)}
    return sorted(folder / ".cache" for folder in folders if (folder / ".cache").is_dir())


def find_caches(folders: list[Path]) -> list[Cache]:
    caches: dict[tuple[Path, str], Cache] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            stem = _stem_of(path.name)
            if stem is not None:
                caches.setdefault((folder, stem), Cache(folder, stem)).files.append(path)
    return list(caches.values())


def _stem_of(name: str) -> str | None:
    """The cache a file belongs to: <stem>.<suffix>, or .<stem>.<suffix>.<random>.tmp (a temporary)."""
    if name.startswith(".") and name.endswith(TEMPORARY_SUFFIX):
        name = name[1:]
    head = name.split(".", 1)[0]
    return head if STEM.fullmatch(head) else None


# -------------------------------------------------------------------------------------------- list


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def list_caches(caches: list[Cache]) -> None:
    header = ("cache", "kind", "split", "images", "on disk", "built", "last used", "in use", "state")
    rows = []
    for cache in caches:
        manifest = cache.manifest() or {}
        rows.append((cache.stem, cache.kind(), cache.split, str(manifest.get("count", "?")), _gib(cache.size()),
                     _when(cache.built()), _when(cache.last_used()), cache.busy() or "no",
                     cache.problem() or "valid"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(caches)} caches, {_gib(sum(c.size() for c in caches))} in all")


# ------------------------------------------------------------------------------------------ remove


def _try_lock(path: Path) -> object | None:
    """`path` opened and exclusively locked without waiting; None when another process holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def remove_cache(cache: Cache, dry_run: bool) -> int | None:
    """Bytes freed (or that would be), None when a process uses the cache (nothing removed)."""
    locks = []
    try:
        for suffix in (".lock", ".used"):  # the openers' order: no deadlock, and no opener mid-build
            if suffix == ".used" and not cache.path(suffix).exists():
                continue
            handle = _try_lock(cache.path(suffix))
            if handle is None:
                return None
            locks.append(handle)
        files = sorted(set(cache.files) | {cache.path(".lock")}, key=lambda p: p.suffix in (".lock", ".used"))
        freed = sum(path.stat().st_size for path in files if path.exists())
        if not dry_run:
            for path in files:  # the lock files last: a waiting opener then locks a fresh one
                path.unlink(missing_ok=True)
        return freed
    finally:
        for handle in locks:
            handle.close()


def _select(caches: list[Cache], args: argparse.Namespace) -> list[Cache]:
    if args.all:
        return caches
    if args.unused_days is not None:
        cutoff = time.time() - args.unused_days * 86400
        return [cache for cache in caches if cache.idle_since() < cutoff]
    return [cache for cache in caches if cache.stem.startswith(args.key) or cache.key.startswith(args.key)]


def remove(caches: list[Cache], args: argparse.Namespace) -> int:
    chosen = _select(caches, args)
    if not chosen:
        print("no cache matched" + (f" {args.key!r}" if args.key else ""), file=sys.stderr)
        return 2
    if args.key and len(chosen) > 1:
        names = ", ".join(cache.stem for cache in chosen)
        print(f"{args.key!r} matches {len(chosen)} caches ({names}); give more of the key", file=sys.stderr)
        return 2
    verb, kept, total = ("would free" if args.dry_run else "freed"), 0, 0
    for cache in chosen:
        freed = remove_cache(cache, args.dry_run)
        if freed is None:
            kept += 1
            print(f"kept {cache.folder / cache.stem} ({cache.kind()}): a process has it open or is building it. "
                  f"To fix: {IN_USE_FIX}", file=sys.stderr)
            continue
        total += freed
        print(f"{'would remove' if args.dry_run else 'removed'} {cache.folder / cache.stem} ({cache.kind()}, "
              f"{len(cache.files)} files): {verb} {_gib(freed)}")
    print(f"{verb} {_gib(total)} in all" + (f"; {kept} caches in use kept" if kept else ""))
    return 1 if kept else 0


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="a table of the caches in DIR (default: the suite's cache folders)")
    listing.add_argument("dirs", nargs="*", type=Path, metavar="DIR")
    removing = commands.add_parser("remove", help="remove caches not in use: KEY, --all or --unused-days N")
    removing.add_argument("args", nargs="*", metavar="KEY|DIR", help="KEY (without --all/--unused-days), then DIRs")
    removing.add_argument("--all", action="store_true", help="every cache in the folders")
    removing.add_argument("--unused-days", type=float, metavar="N", help="caches not opened for N days")
    removing.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    args = parser.parse_args(argv)

    if args.command == "remove":
        if args.all and args.unused_days is not None:
            parser.error("give --all or --unused-days, not both")
        by_key = not args.all and args.unused_days is None
        if by_key and not args.args:
            parser.error("remove needs KEY, --all or --unused-days N")
        args.key = args.args[0] if by_key else None
        args.dirs = [Path(d) for d in args.args[1 if by_key else 0:]]
    folders = args.dirs or default_dirs()
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing or not folders:
        where = ", ".join(missing) if missing else f"no cache folder (set {CACHE_ENV} or CIL_DATA_ROOT, or name DIR)"
        print(f"not a folder: {where}" if missing else where, file=sys.stderr)
        return 2
    caches = find_caches(folders)
    if args.command == "list":
        list_caches(caches)
        return 0
    return remove(caches, args)


if __name__ == "__main__":
    sys.exit(main())
