"""Staging folders of killed builds are removed by the next build; those of live builds never are."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from helpers.runs import REPO_ROOT

from mura_lightning.cluster.staging import OWNER_FILE, owner_is_gone, remove_dead_staging, staging_folder, this_process
from mura_lightning.data.cache import MANIFEST_FILE, build_cache

KILLED_BUILD = textwrap.dedent(
    """
    import sys, time
    from mura_lightning.data import cache

    resize = cache._resize_chunk

    def slow(chunk, target, image_size):
        failed = resize(chunk, target, image_size)
        time.sleep(120)
        return failed

    cache._resize_chunk = slow
    cache.CHUNK_SIZE = 4
    cache.build_cache(sys.argv[2:], 32, sys.argv[1], num_workers=1)
    """
)


def wait_for_staging(cache_dir, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        staged = [path for path in cache_dir.glob(".*") if (path / "images.npy").is_file()]
        if staged:
            return staged
        time.sleep(0.2)
    raise AssertionError("the build never started staging")


def test_the_staging_folder_of_a_killed_build_is_removed_by_the_next_build(mura_root, tmp_path):
    paths = sorted(str(path) for path in mura_root.rglob("*.png"))
    cache_dir = tmp_path / "cache"
    build = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(cache_dir), *paths], cwd=REPO_ROOT)
    try:
        (staged,) = wait_for_staging(cache_dir, build)
    finally:
        build.kill()
        build.wait()
    assert staged.is_dir() and (staged / "images.npy").is_file(), "SIGKILL leaves the staging folder behind"
    built = build_cache(paths, 32, cache_dir, num_workers=1)
    assert sorted(path.name for path in cache_dir.iterdir()) == [built.folder.name]
    assert (built.folder / MANIFEST_FILE).is_file()


def test_a_live_builds_staging_folder_is_kept(mura_root, tmp_path):
    paths = sorted(str(path) for path in mura_root.rglob("*.png"))
    cache_dir = tmp_path / "cache"
    with staging_folder(cache_dir, prefix=".0123456789abcdef0123.") as live:
        built = build_cache(paths, 32, cache_dir, num_workers=1)
        assert live.is_dir()
    assert sorted(path.name for path in cache_dir.iterdir()) == [built.folder.name]


def a_dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(
    ("change", "gone"),
    [
        ({}, False),
        ({"pid": "dead"}, True),
        ({"start": "1"}, True),
        ({"boot_id": "another-boot"}, True),
        ({"host": "another-host", "pid": "dead"}, False),
        ({"pid": "not-a-number"}, False),
    ],
    ids=["this-process", "dead-pid", "pid-reused", "rebooted", "other-host", "damaged"],
)
def test_an_owner_is_gone_only_when_that_is_certain(change, gone):
    if change.get("start") and this_process()["start"] is None:
        pytest.skip("process start times need /proc")
    if change.get("boot_id") and this_process()["boot_id"] is None:
        pytest.skip("boot ids need /proc")
    owner = {**this_process(), **change}
    if owner["pid"] == "dead":
        owner["pid"] = a_dead_pid()
    assert owner_is_gone(owner) is gone


def test_only_matching_folders_with_a_dead_owner_are_removed(tmp_path):
    pattern = re.compile(r"\.stage\..+")
    dead = {**this_process(), "pid": a_dead_pid()}
    folders = {
        ".stage.dead": dead,
        ".stage.live": this_process(),
        ".stage.other-host": {**dead, "host": f"not-{socket.gethostname()}"},
        ".other.dead": dead,
        ".stage.no-owner": None,
    }
    for name, owner in folders.items():
        (tmp_path / name).mkdir()
        if owner is not None:
            (tmp_path / name / OWNER_FILE).write_text(json.dumps(owner))
    assert remove_dead_staging(tmp_path, pattern) == [tmp_path / ".stage.dead"]
    assert sorted(os.listdir(tmp_path)) == sorted(set(folders) - {".stage.dead"})
