"""Where a library lives and what its drive does: folder names that mean something in a URI, read-only media, a
full disk or a write that fails. Each must end in correct results or one line that names the real problem, never a
traceback, a stray file or advice to rebuild a library that is intact."""
import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from index.library import read_state, remove_paths
from index.reader import open_library
from tests import videos
from vmm.cli import main

REPO = Path(__file__).resolve().parents[1]
ENCODER = ColorHistogramEncoder()
HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def make_videos(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": videos.RED, "green": videos.GREEN, "blue": videos.BLUE}
    return {name: videos.write_solid(str(folder / f"{name}.mp4"), colour, seconds=1) for name, colour in colours.items()}


def red_first(library: str) -> bool:
    query = ENCODER.encode_clips([videos.solid_frames(videos.RED, ENCODER.num_frames)])
    with open_library(library, model=ENCODER) as reader:
        (hits,) = reader.search_vectors(query, k=3)
    return os.path.basename(hits[0].path) == "red.mp4" and len(hits) == 3


@pytest.mark.parametrize("name", ["Videos #2", "what?", "100%25 done", "a%20b"])
def test_a_library_folder_named_with_uri_characters_is_searched(tmp_path, capsys, name):
    """The read-only catalog is opened through a SQLite URI: '#' cut the path short (and without mode=ro, SQLite
    created an empty file "Videos " beside the library), '?' did the same, and '%xx' was decoded into another path;
    each was reported as a damaged catalog to rebuild."""
    make_videos(tmp_path / "vids")
    library = tmp_path / name
    assert main(["index", str(tmp_path / "vids"), "--library", str(library), *HIST]) == 0
    before = sorted(os.listdir(tmp_path))
    assert red_first(str(library))
    capsys.readouterr()
    assert main(["search", str(library), "--video", str(tmp_path / "vids" / "red.mp4"), "-k", "1", "--json"]) == 0
    assert '"path": "' + str(tmp_path / "vids" / "red.mp4") in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == before  # no stray file beside the library


@pytest.mark.parametrize("name", ["Videos [2024]", "[a-z]*"])
def test_a_library_folder_named_with_glob_characters_keeps_one_faiss_file(tmp_path, name):
    """The next writer deletes the FAISS files no state names and a killed writer's temporary files by pattern:
    in a folder named "Videos [2024]" the brackets were part of the pattern, so every change left the old FAISS
    file (as large as the index) behind for good."""
    media = make_videos(tmp_path / "vids")
    library = tmp_path / name
    build_library([str(tmp_path / "vids")], str(library), ENCODER, workers=0, progress=False)
    (library / "index-state.json.tmp.4242").write_text("{}")  # a writer killed while replacing the state
    assert remove_paths(str(library), [media["blue"]]) == 1
    videos.write_solid(str(tmp_path / "vids" / "white.mp4"), videos.WHITE, seconds=1)
    build_library([str(tmp_path / "vids")], str(library), ENCODER, workers=0, progress=False)
    assert sorted(os.listdir(library)) == ["catalog.sqlite", "index-state.json", "lock", "manifest.json",
                                           read_state(str(library)).file]
    assert red_first(str(library))


@pytest.fixture
def read_only_folder():
    """Makes a folder unwritable as a read-only medium would be: chmod for a user, the immutable flag for root."""
    made = []

    def make(folder: Path) -> None:
        if os.geteuid() == 0:
            if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
                pytest.skip("running as root without chattr: cannot make an unwritable folder")
        else:
            folder.chmod(0o555)
        made.append(folder)

    yield make
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def vmm(*args, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """`vmm ARGS` in a process of its own; with ``file_size_limit`` no file it writes may grow past that many bytes
    (writes beyond it fail with EFBIG, as on a full disk; Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    return subprocess.run([sys.executable, "-m", "vmm.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
                          preexec_fn=limit if file_size_limit else None)


def one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    return lines[0]


def test_a_library_on_a_read_only_medium_is_searched(tmp_path, read_only_folder):
    """A cleanly closed library has no -shm file, and SQLite cannot read a WAL database without one unless it can
    make it: on a read-only drive every search said the catalog was damaged and should be rebuilt."""
    media = make_videos(tmp_path / "vids")
    library = tmp_path / "lib"
    assert vmm("index", tmp_path / "vids", "--library", library, *HIST).returncode == 0
    assert not (library / "catalog.sqlite-shm").exists()
    read_only_folder(library)
    r = vmm("search", library, "--video", media["red"], "-k", "3")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "red.mp4" in r.stdout.splitlines()[1] and "blue.mp4" in r.stdout
    assert red_first(str(library))
    os.remove(media["blue"])
    r = vmm("index", tmp_path / "vids", "--library", library, *HIST)  # writing is refused, with the reason
    assert r.returncode == 2 and "is not writable" in one_error_line(r.stderr)
    assert sorted(os.listdir(library)) == sorted(["catalog.sqlite", "index-state.json", "lock", "manifest.json",
                                                  "model.json", *[n for n in os.listdir(library) if ".faiss" in n]])


def test_a_full_disk_when_opening_the_catalog_is_not_called_damage(tmp_path):
    """Opening the catalog for writing makes its 32 KiB -shm file; on a full disk that failed with SQLite's
    'disk I/O error', reported as "catalog.sqlite is damaged or not a vmm catalog ...; rebuild the library"."""
    make_videos(tmp_path / "vids")
    library = tmp_path / "lib"
    assert vmm("index", tmp_path / "vids", "--library", library, *HIST).returncode == 0
    videos.write_solid(str(tmp_path / "vids" / "white.mp4"), videos.WHITE, seconds=1)
    r = vmm("index", tmp_path / "vids", "--library", library, *HIST, file_size_limit=16384)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert f"cannot write the library catalog {library}/catalog.sqlite (disk I/O error)" in line
    assert "check free space and permissions" in line and "damaged" not in line and "rebuild" not in line
    r = vmm("index", tmp_path / "vids", "--library", library, *HIST)  # with room again, the run goes on
    assert r.returncode == 0 and "indexed 1 files (1 clips), 3 unchanged" in r.stdout, r.stderr
    assert red_first(str(library))


def test_a_library_of_a_newer_format_is_not_to_be_rebuilt(tmp_path, capsys):
    make_videos(tmp_path / "vids")
    library = str(tmp_path / "lib")
    assert main(["index", str(tmp_path / "vids"), "--library", library, *HIST]) == 0
    conn = sqlite3.connect(os.path.join(library, "catalog.sqlite"))
    with conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'format_version'")
    conn.close()
    capsys.readouterr()
    for argv in (["search", library, "--video", str(tmp_path / "vids" / "red.mp4")],
                 ["index", str(tmp_path / "vids"), "--library", library, *HIST]):
        assert main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "library format 2 was written by a newer vmm (this one reads format 1)" in line
        assert "rebuild" not in line


def test_a_full_disk_while_writing_the_faiss_file_keeps_the_run_and_says_so(tmp_path):
    """The FAISS file is written last. A write that failed there (a full disk) ended the run with FAISS's
    RuntimeError traceback and left its half-written temporary file taking the space."""
    vids = tmp_path / "vids"
    vids.mkdir()
    videos.write_long(str(vids / "long.mp4"), seconds=40.0)
    library, clean = tmp_path / "lib", tmp_path / "clean"
    # HNSW keeps 2 * 512 links of 4 bytes per vector at level 0: the FAISS file (~170 KB for 40 clips) outgrows the
    # catalog (~60 KB), so only its write meets the limit.
    options = ["--window", "1", "--stride", "1", "--factory", "HNSW512,Flat", *HIST]
    r = vmm("index", vids, "--library", library, *options, file_size_limit=120_000)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert f"cannot write the FAISS index of library {library} (File too large); every finished file is in its " \
           "catalog" in line and "free space" in line
    assert not [name for name in os.listdir(library) if ".faiss" in name]  # no temporary file left behind
    with open_library(str(library)) as reader:  # the catalog has every clip, and searches find them
        assert len(reader) == 40
    r = vmm("index", vids, "--library", library, *HIST)
    assert r.returncode == 0 and "0 files (0 clips), 1 unchanged" in r.stdout, r.stderr
    assert len([name for name in os.listdir(library) if name.endswith(".faiss")]) == 1
    assert vmm("index", vids, "--library", clean, *options).returncode == 0
    query = ENCODER.encode_clips([videos.solid_frames(videos.RED, ENCODER.num_frames)])
    answers = []
    for lib in (library, clean):
        with open_library(str(lib)) as reader:
            (hits,) = reader.search_vectors(query, k=40)
            answers.append([(h.start, h.end, round(h.score, 5)) for h in hits])
    assert answers[0] == answers[1] and len(answers[0]) == 40


def test_a_full_disk_while_creating_the_catalog_names_sqlites_error(tmp_path):
    """SQLite rolls a transaction back itself after an I/O error; the ROLLBACK that followed failed with 'cannot
    rollback - no transaction is active', and that was the message instead of the error."""
    make_videos(tmp_path / "vids")
    library = tmp_path / "lib"
    r = vmm("index", tmp_path / "vids", "--library", library, *HIST, file_size_limit=5000)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert f"cannot write the library catalog in {library} (disk I/O error); check free space" in line
    assert vmm("index", tmp_path / "vids", "--library", library, *HIST).returncode == 0
    assert red_first(str(library))


FULL_DISK = """
set -e
mount -t tmpfs -o size=4m,nr_inodes=64 tmpfs "$DRIVE"
python - <<'PY'
import os
drive = os.environ["DRIVE"]
st = os.statvfs(drive)
if "FREE" in os.environ:
    with open(os.path.join(drive, "filler"), "wb") as f:
        f.write(bytes(st.f_bavail * st.f_frsize - int(os.environ["FREE"])))
if "FREE_INODES" in os.environ:  # empty files, each taking one of the drive's inodes
    os.mkdir(os.path.join(drive, "fillers"))
    for i in range(os.statvfs(drive).f_favail - int(os.environ["FREE_INODES"])):
        open(os.path.join(drive, "fillers", str(i)), "w").close()
PY
set +e
"$@" 2>"$OUT/first.err"; echo $? >"$OUT/first.rc"
rm -r "$DRIVE"/fill*
"$@" >"$OUT/second.out" 2>&1; echo $? >"$OUT/second.rc"
cp -a "$DRIVE/lib" "$OUT/lib"
"""


def index_on_a_full_drive(tmp_path: Path, **free: int) -> Path:
    """`vmm index` of make_videos' folder into DRIVE/lib on a small file system with only ``FREE`` bytes or
    ``FREE_INODES`` files left, then again once the drive has room; the results (first.rc, first.err, second.rc,
    second.out, and the library) are in the returned folder."""
    make_videos(tmp_path / "vids")
    drive, out = tmp_path / "drive", tmp_path / "out"
    drive.mkdir(), out.mkdir()
    command = [sys.executable, "-m", "vmm.cli", "index", str(tmp_path / "vids"), "--library", str(drive / "lib"),
               *HIST]
    # A small file system of its own, in a mount namespace of its own: nothing is mounted outside the test.
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DRIVE": str(drive), "OUT": str(out),
           **{name: str(value) for name, value in free.items()}}
    try:
        r = subprocess.run([*unshare, "bash", "-c", FULL_DISK, "full-disk", *command], capture_output=True,
                           text=True, cwd=REPO, env=env, timeout=300)
    except FileNotFoundError:
        pytest.skip("no unshare command")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {r.stderr.strip()[-200:]}")
    return out


@pytest.mark.parametrize("free", [0, 90_000], ids=["no-room-at-all", "room-for-the-wal-only"])
def test_a_full_disk_while_a_library_is_made_leaves_a_library_to_make(tmp_path, free):
    """A new catalog is written in WAL mode as catalog.sqlite.new and renamed into place. With room for its -wal
    file but not for the checkpoint into the database, close() failed without a word, the rename moved the half-
    checkpointed database away from its -wal, and every later run said the library was damaged, to be rebuilt
    into a new folder. With no room at all, writing the pid into the lock file ended the run with a traceback."""
    out = index_on_a_full_drive(tmp_path, FREE=free)
    assert (out / "first.rc").read_text().strip() == "2"
    line = one_error_line((out / "first.err").read_text())
    assert "check free space" in line and "damaged" not in line, line
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.out").read_text()
    assert "indexed 3 files (3 clips)" in (out / "second.out").read_text()
    assert red_first(str(out / "lib"))


@pytest.mark.parametrize("free_inodes, what", [(2, "the library catalog in {lib}"),
                                               (7, "the FAISS index of library {lib}")])
def test_a_drive_out_of_inodes_is_named_in_one_line(tmp_path, free_inodes, what):
    """A drive with bytes to spare but no inode left (or a quota on the number of files, usual on shared
    clusters) cannot make a new file: with room for the folder and its lock only, making catalog.sqlite.new ended
    the run with an OSError traceback; with room for every file but the FAISS index, the message was FAISS's
    C++ text ("Error in faiss::FileIOWriter::FileIOWriter(const char*) at .../io.cpp:103: ... could not open
    ... for writing: No space left on device")."""
    out = index_on_a_full_drive(tmp_path, FREE_INODES=free_inodes)
    assert (out / "first.rc").read_text().strip() == "2"
    line = one_error_line((out / "first.err").read_text())
    lib = tmp_path / "drive" / "lib"
    assert line.startswith(f"error: cannot write {what.format(lib=lib)} (No space left on device); ") and \
        "free space" in line and "faiss::" not in line, line
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.out").read_text()
    assert red_first(str(out / "lib"))


def test_a_library_path_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path):
    """A folder name in another encoding (Latin-1 bytes under a UTF-8 locale): indexing created the catalog, then
    failed in FAISS's write_index with a traceback; a search failed in SQLite."""
    from tests import videos
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = os.fsdecode(os.fsencode(str(tmp_path)) + b"/lib\xff")
    for args in (["index", str(tmp_path), "--library", library, "--model", "color-histogram", "--workers", "0"],
                 ["search", library, "red"]):
        run = subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert run.returncode == 2 and run.stderr == (f"error: the library path {tmp_path}/lib\\xff is not valid "
                                                      "UTF-8; choose a folder whose name is\n").encode(), run.stderr
    assert sorted(os.listdir(tmp_path)) == ["red.mp4"]


def test_a_full_disk_while_removing_files_says_so_in_one_line_and_keeps_the_library(tmp_path, capsys):
    """`vmm index --remove` commits the removal and refreshes the FAISS file outside the ingest run's handling of
    SQLite's errors: a full disk there ended the command with a traceback of sqlite3.OperationalError."""
    make_videos(tmp_path / "vids")
    videos.write_long(str(tmp_path / "vids" / "long.mp4"), seconds=20.0)
    library = tmp_path / "lib"
    assert main(["index", str(tmp_path / "vids"), "--library", str(library), "--window", "1", "--stride", "1",
                 *HIST]) == 0
    # Room for the catalog's 32 KiB -shm file, not for a WAL holding the removal of the long video's 20 clips.
    r = vmm("index", "--remove", tmp_path / "vids" / "long.mp4", "--library", library, file_size_limit=33_000)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert f"cannot write the library catalog in {library} (" in line and "check free space" in line
    with open_library(str(library)) as reader:  # rolled back whole: every clip is still there, once
        assert len(reader) == 3 + 20
    capsys.readouterr()
    assert main(["index", "--remove", str(tmp_path / "vids" / "long.mp4"), "--library", str(library)]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert red_first(str(library))
