"""A library as a thing users share: searched by a user who cannot write its folder, written by a group."""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import videos
from vmm.cli import main

REPO = Path(__file__).resolve().parents[1]
HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]
# Root ignores file modes; without these capabilities it is held to them like any user.
DROP_CAPS = ["setpriv", "--inh-caps=-dac_override,-dac_read_search,-fowner",
             "--bounding-set=-dac_override,-dac_read_search,-fowner"]

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def make_videos(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {name: videos.write_solid(str(folder / f"{name}.mp4"), colour, seconds=1)
            for name, colour in (("red", videos.RED), ("blue", videos.BLUE))}


def vmm(*args, prefix=(), umask=None) -> subprocess.CompletedProcess:
    code = "import os, sys; from vmm.cli import main; " + (f"os.umask({umask}); " if umask is not None else "")
    return subprocess.run([*prefix, sys.executable, "-c", code + "sys.exit(main(sys.argv[1:]))", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)


def test_a_library_in_a_folder_this_user_cannot_write_is_searched(tmp_path):
    """SQLite reads a WAL catalog through a -shm file it makes beside it. In a folder this user may not write
    (another user's library) it says SQLITE_READONLY_DIRECTORY, not the CANTOPEN of a read-only mount, and every
    search failed with "cannot read the library catalog ... (attempt to write a readonly database)"."""
    if os.geteuid() == 0 and (shutil.which("setpriv") is None
                              or subprocess.run(DROP_CAPS + ["true"], capture_output=True).returncode):
        pytest.skip("running as root without setpriv: cannot be held to file modes")
    media = make_videos(tmp_path / "vids")
    library = tmp_path / "lib"
    assert main(["index", str(tmp_path / "vids"), "--library", str(library), *HIST]) == 0
    before = sorted(os.listdir(library))
    library.chmod(0o555)
    try:
        r = vmm("search", library, "--video", media["red"], "-k", "2", "--json",
                prefix=DROP_CAPS if os.geteuid() == 0 else ())
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert [hit["path"] for hit in json.loads(r.stdout)] == [media["red"], media["blue"]]
        r = vmm("index", tmp_path / "vids", "--library", library, *HIST, prefix=DROP_CAPS if os.geteuid() == 0 else ())
        assert r.returncode == 2 and r.stderr == f"error: library folder {library} is not writable; choose a folder " \
                                                 "you can write to\n"
    finally:
        library.chmod(0o755)
    assert sorted(os.listdir(library)) == before


def test_the_files_of_a_library_follow_the_umask_so_a_group_can_share_it(tmp_path):
    """SQLite makes a database 0644 whatever the umask, and the lock was made 0644 too: a library made with umask
    002 in a group's shared folder could be searched by the group but not written ("cannot write to library
    folder"); after another member's search had left its -shm, not even by its owner."""
    make_videos(tmp_path / "vids")
    library = tmp_path / "lib"
    old = os.umask(0o002)
    try:
        assert main(["index", str(tmp_path / "vids" / "red.mp4"), "--library", str(library), *HIST]) == 0
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(library / name).st_mode) for name in os.listdir(library)}
    assert {"catalog.sqlite", "lock", "index-state.json"} <= set(modes)
    assert all(mode == 0o664 for mode in modes.values()), modes
    old = os.umask(0o077)
    try:
        assert main(["index", str(tmp_path / "vids" / "red.mp4"), "--library", str(tmp_path / "private"), *HIST]) == 0
    finally:
        os.umask(old)
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in (tmp_path / "private").iterdir())



def test_two_members_of_a_group_write_one_library_in_turn(tmp_path):
    """The umask test above, for real: two users of one group index and search one library in a setgid folder."""
    members = [["setpriv", f"--reuid={uid}", "--regid=100", "--groups=100"] for uid in (4101, 4102)]
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as two other users")
    probe = subprocess.run([*members[0], sys.executable, "-c", "import vmm"], capture_output=True, cwd="/",
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    if probe.returncode:  # a clone under mktemp -d: its 0700 folder keeps other users out of the code
        pytest.skip(f"another user cannot import vmm from {REPO} (a folder above it is private)")
    make_videos(tmp_path / "vids")
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        shared.chmod(0o2775)
        os.chown(shared, 0, 100)
        shutil.copytree(tmp_path / "vids", shared / "vids")
        for path in [shared / "vids", *(shared / "vids").iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        r = vmm("index", shared / "vids" / "red.mp4", "--library", shared / "lib", *HIST, prefix=members[0], umask=2)
        assert r.returncode == 0, r.stderr
        r = vmm("search", shared / "lib", "--video", shared / "vids" / "red.mp4", "-k", "1", prefix=members[1],
                umask=2)
        assert r.returncode == 0, r.stderr  # leaves its -shm and -wal in the folder, as a reader does
        r = vmm("index", shared / "vids", "--library", shared / "lib", *HIST, prefix=members[1], umask=2)
        assert r.returncode == 0 and "indexed 1 files (1 clips), 1 unchanged" in r.stdout, r.stderr
        videos.write_solid(str(shared / "vids" / "green.mp4"), videos.GREEN, seconds=1)
        r = vmm("index", shared / "vids", "--library", shared / "lib", *HIST, prefix=members[0], umask=2)
        assert r.returncode == 0 and "indexed 1 files (1 clips), 2 unchanged" in r.stdout, r.stderr
    finally:
        shutil.rmtree(shared)


def test_a_lock_file_this_user_cannot_write_is_named_not_the_folder(tmp_path):
    """A library shared by a group but made before its files followed the umask has a lock only its owner may
    write: the other members were told "cannot write to library folder ...; choose a folder you can write to",
    though they can write the folder."""
    if os.geteuid() == 0 and (shutil.which("setpriv") is None
                              or subprocess.run(DROP_CAPS + ["true"], capture_output=True).returncode):
        pytest.skip("running as root without setpriv: cannot be held to file modes")
    make_videos(tmp_path / "vids")
    library = tmp_path / "my lib"
    assert main(["index", str(tmp_path / "vids"), "--library", str(library), *HIST]) == 0
    (library / "lock").chmod(0o444)
    r = vmm("index", tmp_path / "vids", "--library", library, *HIST, prefix=DROP_CAPS if os.geteuid() == 0 else ())
    assert r.returncode == 2 and r.stderr == (f"error: cannot write the lock file {library / 'lock'} (Permission "
                                              f"denied); ask its owner to make the library's files writable for you "
                                              f"(chmod g+w '{library}'/*)\n"), r.stderr


# Reads the library at least argv[2] times, and until the file argv[3] says the owner has written it ten times
# meanwhile: six seconds of reads were two on a busy machine.
READ_LOOP = """
import collections, json, os, sys
from index.reader import open_library
reads, problems = 0, collections.Counter()
while reads < int(sys.argv[2]) or not os.path.exists(sys.argv[3]):
    try:
        with open_library(sys.argv[1]) as reader:
            per_file = collections.Counter(reader._clip_files.tolist())
            if set(per_file.values()) - {10} or len(per_file) != len(reader.files):
                problems["a file with some of its clips"] += 1
            # What a search reads when the FAISS file turns out stale: the catalog's vectors of the snapshot's clips.
            read = reader._without_stale_file(reader._stores)[3]._ids()
            per_file = collections.Counter(reader._clip_files[reader._clip_ids.searchsorted(read)].tolist())
            if set(per_file.values()) - {10}:  # files removed since the snapshot are absent, not torn
                problems["vectors of a file with some of its clips"] += 1
    except Exception as error:
        problems[f"{type(error).__name__}: {error}"] += 1
    reads += 1
print(json.dumps({"reads": reads, "problems": problems}))
"""


def test_a_library_this_user_cannot_write_is_read_whole_while_its_owner_writes(tmp_path):
    """Where this user may not write the folder, the catalog is read without SQLite's locks (it cannot make the
    -shm file): a writer checkpointing into it meanwhile gave "database disk image is malformed" (a traceback) or
    a torn snapshot (a file with some of its clips, KeyError) in one read of four."""
    import threading

    import numpy as np

    from index.catalog import FileResult, LibraryManifest
    from index.library import LibraryWriter

    if os.geteuid() == 0 and (shutil.which("setpriv") is None
                              or subprocess.run(DROP_CAPS + ["true"], capture_output=True).returncode):
        pytest.skip("running as root without setpriv: cannot be held to file modes")
    if os.geteuid() != 0:
        pytest.skip("needs a writer allowed in a folder that the reader may not write (root and a reader without "
                    "its capabilities)")
    library = tmp_path / "lib"
    rng = np.random.default_rng(0)

    def batch(tag: int) -> list:
        return [FileResult(f"/videos/{tag}/{i}.mp4", 1, 1, f"{tag}-{i}", "ok", spans=[(s, s + 1) for s in range(10)],
                           vectors=rng.standard_normal((10, 64)).astype(np.float32)) for i in range(50)]

    with LibraryWriter.open(str(library), LibraryManifest("toy", "w0", 64, 8, "middle", {}, 10.0, 5.0, None)) as w:
        for tag in range(40):
            w.catalog.commit(batch(tag))
    library.chmod(0o555)
    stop, cycles, written = threading.Event(), [0], tmp_path / "written ten times"

    def write():  # the owner: a run that opens the library, commits, drops an older folder and closes, again
        tag = 40
        while not stop.is_set():
            with LibraryWriter.open(str(library)) as writer:
                writer.catalog.commit(batch(tag))
                writer.catalog.commit(remove=[r.id for r in writer.catalog.files(under=[f"/videos/{tag - 40}"])])
            tag, cycles[0] = tag + 1, cycles[0] + 1
            if cycles[0] == 10:
                written.touch()
            stop.wait(0.02)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        r = subprocess.run([*DROP_CAPS, sys.executable, "-c", READ_LOOP, str(library), "40", str(written)],
                           capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                           timeout=300)
    finally:
        stop.set()
        thread.join()
        library.chmod(0o755)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["problems"] == {} and result["reads"] >= 40 and cycles[0] >= 10, (result, cycles)


# The reader's first connection finds no -shm file and may not make one; this pauses it there, after SQLite's
# refusal, until the owner has opened the catalog (and so made the -shm) meanwhile.
RACE_READ = """
import sqlite3, sys
from index.reader import open_library
connect, paused = sqlite3.connect, []

class PausedOnFirstRefusal:
    def __init__(self, conn):
        self.conn = conn
    def execute(self, *args):
        try:
            return self.conn.execute(*args)
        except sqlite3.OperationalError:
            if not paused:
                paused.append(1)
                print("refused", flush=True)
                sys.stdin.readline()
            raise
    def __getattr__(self, name):
        return getattr(self.conn, name)

sqlite3.connect = lambda *args, **kwargs: PausedOnFirstRefusal(connect(*args, **kwargs))
with open_library(sys.argv[1]) as reader:
    print(len(reader.files), paused, flush=True)
"""


def test_a_writer_that_opens_the_catalog_while_a_reader_that_cannot_write_the_folder_opens_it(tmp_path):
    """A reader that may not make the -shm file, refused by SQLite because there was none, then found the owner's
    (who opened the catalog meanwhile) and said "cannot read the library catalog (attempt to write a readonly
    database)": one read in about fifty while the owner indexed."""
    import numpy as np

    from index.catalog import FileResult, LibraryManifest
    from index.library import LibraryWriter

    if os.geteuid() != 0 or shutil.which("setpriv") is None \
            or subprocess.run(DROP_CAPS + ["true"], capture_output=True).returncode:
        pytest.skip("needs a writer allowed in a folder that the reader may not write (root and a reader without "
                    "its capabilities)")
    library = tmp_path / "lib"
    vectors = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    with LibraryWriter.open(str(library), LibraryManifest("toy", "w0", 16, 8, "middle", {}, 10.0, 5.0, None)) as w:
        w.catalog.commit([FileResult(f"/videos/{i}.mp4", 1, 1, str(i), "ok", spans=[(0, 1)], vectors=vectors[i:i + 1])
                          for i in range(3)])
    assert not os.path.exists(library / "catalog.sqlite-shm")
    library.chmod(0o555)
    reader = subprocess.Popen([*DROP_CAPS, sys.executable, "-c", RACE_READ, str(library)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert reader.stdout.readline() == "refused\n", reader.communicate()[1]
        with LibraryWriter.open(str(library)):  # the owner starts a run
            assert os.path.exists(library / "catalog.sqlite-shm")
            out, err = reader.communicate("\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
        library.chmod(0o755)
    assert reader.returncode == 0 and out == "3 [1]\n", err
