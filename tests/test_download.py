"""The torchvision download path, end to end, without the internet.

A small CIFAR-100 in torchvision's own format (cifar-100-python.tar.gz holding the train/test/meta
pickles, 2 train and 1 test image per class) is served by an HTTP server on 127.0.0.1; torchvision's
CIFAR100 is pointed at it by patching its url and md5 attributes. Everything else is the real code:
torchvision's download, md5 check and unpacking, our conversion, checks and uint8 cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torchvision.datasets

from benchmark.data import DATASETS, DataError, check_dataset, find_dataset_dir, load_dataset
from conftest import find_or_download_cifar100

TARBALL = "cifar-100-python.tar.gz"
TRAIN_PER_CLASS, TEST_PER_CLASS = 2, 1
NAMES = [f"class{i:02d}" for i in range(100)]


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, 32, 32, 3], as our loader must return them
    labels: np.ndarray


def make_split(per_class: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(100), per_class))  # classes interleaved, as in CIFAR
    return Split(rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels)


def pickled(split: Split) -> bytes:
    # torchvision reads rows of 3,072 bytes in CHW order and transposes them to HWC.
    rows = split.images.transpose(0, 3, 1, 2).reshape(len(split.labels), -1)
    return pickle.dumps({"data": rows, "fine_labels": split.labels.tolist(),
                         "coarse_labels": (split.labels // 5).tolist(), "filenames": [], "batch_label": "fake"})


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class FakeRelease:
    """The served folder, the expected content, and the md5s torchvision must be told."""

    folder: Path
    train: Split
    test: Split
    md5s: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> FakeRelease:
    folder = tmp_path_factory.mktemp("served")
    train, test = make_split(TRAIN_PER_CLASS, seed=0), make_split(TEST_PER_CLASS, seed=1)
    members = {"train": pickled(train), "test": pickled(test),
               "meta": pickle.dumps({"fine_label_names": NAMES, "coarse_label_names": [f"c{i}" for i in range(20)]})}
    with tarfile.open(folder / TARBALL, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    md5s = {name: md5(data) for name, data in members.items()}
    md5s[TARBALL] = md5((folder / TARBALL).read_bytes())
    return FakeRelease(folder, train, test, md5s)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """(base url, request log) of a loopback-only HTTP server for `folder`, stopped on exit."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        timeout = 10  # seconds per connection: a stuck client cannot hang the test run

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, format, *args):  # record instead of printing to stderr
            requests.append(self.requestline)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def served(release, monkeypatch) -> Iterator[list[str]]:
    """torchvision's CIFAR100 pointed at the local server; yields the server's request log."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # loopback must not go via a proxy
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(DATASETS, "cifar100", replace(DATASETS["cifar100"], train_per_class=2, test_per_class=1))
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "tgz_md5", release.md5s[TARBALL])
    monkeypatch.setattr(cls, "train_list", [["train", release.md5s["train"]]])
    monkeypatch.setattr(cls, "test_list", [["test", release.md5s["test"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": release.md5s["meta"]})
    with serve(release.folder) as (base, requests):
        monkeypatch.setattr(cls, "url", f"{base}/{TARBALL}")
        yield requests


def refuse(*args, **kwargs):
    raise AssertionError("torchvision must not be called once the cache exists")


def assert_matches(data, release: FakeRelease) -> None:
    np.testing.assert_array_equal(data.train.images, release.train.images)
    np.testing.assert_array_equal(data.train.labels, release.train.labels)
    np.testing.assert_array_equal(data.test.images, release.test.images)
    np.testing.assert_array_equal(data.test.labels, release.test.labels)
    assert data.class_names == NAMES


@pytest.mark.filterwarnings("error")  # a cache that silently fails to be written is a failure here
def test_download_unpacks_caches_and_reloads_offline(tmp_path, release, served, monkeypatch):
    root = tmp_path / "data"
    first = load_dataset("cifar100", root, download=True)
    assert_matches(first, release)
    assert served and set(served) == {f"GET /{TARBALL} HTTP/1.1"}
    folder = root / "cifar100"
    assert (folder / TARBALL).read_bytes() == (release.folder / TARBALL).read_bytes()
    assert sorted(p.name for p in (folder / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    assert (folder / "cifar100-uint8.npz").is_file()
    assert find_dataset_dir("cifar100", root) == folder

    fetched = len(served)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", refuse)
    again = load_dataset("cifar100", root, download=True)
    assert_matches(again, release)
    assert len(served) == fetched  # the second load never touched the network


def test_check_dataset_downloads_only_when_asked(tmp_path, served):
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"(?s)CIFAR-100 .* not found.*Nothing was downloaded") as err:
        check_dataset("cifar100", root, download=False)
    assert f"downloads it into {root / 'cifar100'}" in str(err.value)
    assert served == [] and not root.exists()
    assert check_dataset("cifar100", root, download=True) == root / "cifar100"
    assert f"GET /{TARBALL} HTTP/1.1" in served
    assert (root / "cifar100" / "cifar100-uint8.npz").is_file()


def test_a_corrupted_download_is_one_data_error(tmp_path, served, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "tgz_md5", "0" * 32)  # as if the bytes were damaged
    with pytest.raises(DataError, match=r"(?s)torchvision could not download into .*File not found or corrupted") as err:
        load_dataset("cifar100", tmp_path, download=True)
    assert "--data-root DIR" in str(err.value)
    assert not (tmp_path / "cifar100" / "cifar100-uint8.npz").exists()


def test_test_fixture_falls_back_to_the_download(tmp_path, release, served):
    # No data under the searched roots: the fixture's helper downloads into the target and returns a root
    # that load_dataset accepts directly and through its parent.
    target = tmp_path / "cache"
    folder = find_or_download_cifar100([tmp_path / "empty"], target)
    assert folder == target / "cifar100" and served
    assert_matches(load_dataset("cifar100", folder, download=False), release)
    assert_matches(load_dataset("cifar100", folder.parent, download=False), release)


def test_test_fixture_failure_names_both_options(tmp_path):
    unreachable = "http://127.0.0.1:9/none.tar.gz"  # the discard port: nothing listens there
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.datasets.CIFAR100, "url", unreachable)
        with pytest.raises(pytest.fail.Exception) as err:
            find_or_download_cifar100([tmp_path / "empty"], tmp_path / "cache")
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "URLError" in message
    assert "make test DATA=DIR" in message and "with a network" in message
