"""Finding videos by extension and by content, and fingerprinting them."""
import os

import pytest

from tests import videos
from index.discovery import discover, fingerprint_file, sniff_container
from vmm.classify import find_videos
from vmm.errors import VmmError


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "media"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    videos.write_solid(str(root / "a" / "green.webm"), videos.GREEN, codec="vp9")
    videos.write_solid(str(root / "a" / "b" / "blue.avi"), videos.BLUE, codec="mpeg4")
    videos.write_solid(str(root / "a" / "renamed.dat"), videos.YELLOW)  # an MP4 without a video extension
    videos.write_solid(str(root / "a" / "noextension"), videos.WHITE)
    videos.write_solid(str(root / ".hidden" / "secret.mp4"), videos.RED)
    videos.write_solid(str(root / "._appledouble.mp4"), videos.RED)
    videos.write_text(str(root / "notes.mp4"))  # text with a video extension
    videos.write_text(str(root / "readme.txt"))
    videos.write_empty(str(root / "empty.mkv"))
    videos.write_empty(str(root / "empty.bin"))
    videos.write_audio_only(str(root / "song.m4a"))  # MP4 container, audio brand, audio extension
    return root


def test_discovery_by_extension_and_content(tree):
    found = discover([str(tree)])
    by_name = {os.path.relpath(c.path, tree): c for c in found.candidates}
    assert sorted(by_name) == sorted([
        "red.mp4", "a/green.webm", "a/b/blue.avi", "a/renamed.dat", "a/noextension", "notes.mp4", "empty.mkv",
    ])
    assert all(os.path.isabs(c.path) for c in found.candidates)
    assert [c.path for c in found.candidates] == sorted(c.path for c in found.candidates)
    assert by_name["a/renamed.dat"].container == "mp4" and by_name["a/renamed.dat"].problem is None
    assert by_name["a/green.webm"].container == "matroska"
    assert by_name["a/b/blue.avi"].container == "avi"
    assert by_name["notes.mp4"].problem == "not a video: the file holds text"
    assert by_name["empty.mkv"].problem == "empty file (0 bytes)"
    assert by_name["red.mp4"].size == os.path.getsize(tree / "red.mp4")


def test_explicit_files_are_always_reported(tree):
    found = discover([str(tree / "readme.txt"), str(tree / "a" / "renamed.dat"), str(tree / "song.m4a")])
    problems = {os.path.basename(c.path): c.problem for c in found.candidates}
    assert problems["renamed.dat"] is None
    assert problems["readme.txt"] == "not a video: text and no video extension"
    assert problems["song.m4a"] is None  # a container named explicitly: the decoder has the last word


def test_exclude_and_duplicates(tree):
    found = discover([str(tree), str(tree / "a")], exclude=[str(tree / "a" / "b")])
    paths = [os.path.relpath(c.path, tree) for c in found.candidates]
    assert "a/b/blue.avi" not in paths and len(paths) == len(set(paths))


def test_undecodable_file_name_is_refused_only_where_a_library_stores_it(tmp_path):
    """A Latin-1 name (b"caf\\xe9.mp4" from an old camera or a vfat stick) cannot be stored in a catalog, but a
    decoder opens it: vmm classify found it given alone and refused it in a folder. The refusal names the byte."""
    videos.write_solid(str(tmp_path / "fine.mp4"), videos.RED)
    bad = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4")
    with open(bad, "wb") as f:
        f.write(open(tmp_path / "fine.mp4", "rb").read())
    found = discover([str(tmp_path)])
    assert [c.path for c in found.candidates] == [os.fsdecode(bad), str(tmp_path / "fine.mp4")]
    assert not found.unreadable
    videos_found, problems = find_videos([str(tmp_path)])
    assert videos_found == [os.fsdecode(bad), str(tmp_path / "fine.mp4")] and not problems

    found = discover([str(tmp_path)], utf8_only=True)
    assert [os.path.basename(c.path) for c in found.candidates] == ["fine.mp4"]
    assert found.unreadable == [(f"{tmp_path}/caf\\xe9.mp4", "file name is not valid UTF-8, which a library "
                                 "cannot store; rename the file (convmv renames a whole folder)")]


def test_nonexistent_path_is_a_clear_error(tmp_path):
    with pytest.raises(VmmError, match=r"^.*nowhere: no such file or folder; check the path$"):
        discover([str(tmp_path / "nowhere")])


def test_one_path_is_one_path_and_no_path_is_named(tree, monkeypatch):
    """discover("media") took each character for a path ("m": no such file; "/videos" walked "/" first), and a
    number failed inside os.fspath; discover takes what build_library and remove_paths take."""
    monkeypatch.chdir(tree.parent)
    one = discover("media")
    assert [c.path for c in one.candidates] == [c.path for c in discover([str(tree)]).candidates]
    assert [c.path for c in discover(tree / "red.mp4").candidates] == [str(tree / "red.mp4")]
    for bad, message in ((3, "paths must be file or folder paths (str or os.PathLike), got 3; pass the videos to find"),
                         ([None], "paths must be file or folder paths (str or os.PathLike), got None; pass the videos to find"),
                         ([b"media"], "paths must be str, not bytes: got b'media'; decode it with os.fsdecode"),
                         ([""], "paths holds an empty path (''); pass the files or folders to find")):
        with pytest.raises(VmmError) as e:
            discover(bad)
        assert str(e.value) == message


def test_sniffing_signatures():
    assert sniff_container(b"\x00\x00\x00\x18ftypmp42" + bytes(8)) == "mp4"
    assert sniff_container(b"\x00\x00\x00\x18ftypM4A " + bytes(8)) == "mp4-audio-or-image"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + bytes(8)) == "matroska"
    assert sniff_container(b"RIFF\x00\x00\x00\x00AVI LIST") == "avi"
    assert sniff_container(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    ts = bytearray(400)
    ts[0] = ts[188] = ts[376] = 0x47
    assert sniff_container(bytes(ts)) == "mpeg-ts"
    assert sniff_container(b"just some words") is None


def test_fingerprint_follows_content_not_name(tmp_path):
    a = videos.write_solid(str(tmp_path / "a.mp4"), videos.RED)
    b = str(tmp_path / "b.mp4")
    with open(a, "rb") as src, open(b, "wb") as dst:
        dst.write(src.read())
    assert fingerprint_file(a) == fingerprint_file(b)
    with open(b, "r+b") as f:  # one byte changed in the middle
        f.seek(os.path.getsize(b) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert fingerprint_file(a) != fingerprint_file(b)
    big = tmp_path / "big.bin"  # > 3 MiB: sampled; the unsampled region does not count
    data = bytearray(os.urandom(5 << 20))
    big.write_bytes(bytes(data))
    first = fingerprint_file(str(big))
    data[(3 << 19)] ^= 0xFF  # at 1.5 MiB, between the first and the middle MiB: not sampled
    big.write_bytes(bytes(data))
    assert fingerprint_file(str(big)) == first
    data[(5 << 20) - (1 << 20) + 10] ^= 0xFF  # inside the last MiB: counts
    big.write_bytes(bytes(data))
    assert fingerprint_file(str(big)) != first


def test_fifo_and_broken_link_are_reported_never_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")  # opening it for reading would wait for a writer forever
    os.symlink(tmp_path / "nowhere.mp4", tmp_path / "link.mp4")
    found = discover([str(tmp_path)])
    assert found.candidates == []
    assert sorted(found.unreadable) == [
        (str(tmp_path / "link.mp4"), "broken symbolic link (its target is missing)"),
        (str(tmp_path / "pipe.mp4"), "not a regular file (a FIFO, socket or device); skipped")]
    with pytest.raises(OSError, match="not a regular file"):
        fingerprint_file(str(tmp_path / "pipe.mp4"))


def test_files_read_and_found_not_video_are_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert discover([str(tmp_path)]).rejected == {str(tmp_path / "notes.txt")}


def test_photos_songs_and_camera_proxies_in_a_folder_are_never_opened(tmp_path):
    """Their extension settles it, so a DCIM folder's photos cost no open (a round trip on a network drive): a
    FIFO or a broken link named as one was reported unreadable, and a song with a video inside is not sniffed. A
    GoPro's low-resolution copy (.LRV, an MP4) of each video was sniffed and indexed: every match came twice."""
    os.mkfifo(tmp_path / "IMG_0001.HEIC")
    os.symlink(tmp_path / "unmounted" / "IMG_0002.jpg", tmp_path / "IMG_0002.jpg")
    videos.write_solid(str(tmp_path / "song.m4a"), videos.RED)  # MP4 bytes behind an audio extension
    videos.write_solid(str(tmp_path / "GX010001.MP4"), videos.RED)
    videos.write_solid(str(tmp_path / "GL010001.LRV"), videos.RED, width=32, height=24)
    found = discover([str(tmp_path)])
    assert [c.path for c in found.candidates] == [str(tmp_path / "GX010001.MP4")] and found.unreadable == []
    assert found.rejected == {str(tmp_path / name)
                              for name in ("IMG_0001.HEIC", "IMG_0002.jpg", "song.m4a", "GL010001.LRV")}
    for name in ("song.m4a", "GL010001.LRV"):  # named on its own, it is read: the decoder decides
        named = discover([str(tmp_path / name)])
        assert [(c.container, c.problem) for c in named.candidates] == [("mp4", None)]


def test_a_file_reached_by_two_paths_is_found_once(tmp_path):
    """A folder given beside a symbolic link to it: each video once, under its first path."""
    from index.discovery import discover
    folder = tmp_path / "vids"
    folder.mkdir()
    videos.write_solid(str(folder / "red.mp4"), videos.RED, seconds=1)
    (tmp_path / "link").symlink_to(folder)
    os.link(folder / "red.mp4", folder / "red-hardlink.mp4")
    found = discover([str(folder), str(tmp_path / "link")])
    assert [c.path for c in found.candidates] == [str(folder / "red-hardlink.mp4")]


HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]


@pytest.mark.usefixtures("one_faiss_thread")
def test_downloads_in_progress_and_other_systems_trash_are_not_indexed(tmp_path, capsys):
    """A browser's `clip.mp4.part` was indexed as a failed (or half a) video under a path about to vanish, and a
    drive's recycle bin or a Synology share's @eaDir (transcoded copies) as videos of their own."""
    from vmm.cli import main
    media, library = tmp_path / "media", str(tmp_path / "lib")
    for folder in ("$RECYCLE.BIN/S-1-5-21", "@eaDir/CAM.MOV", "#recycle", "System Volume Information",
                   "movie.mp4.download"):
        (media / folder).mkdir(parents=True)
    cam = videos.write_solid(str(media / "CAM.MOV"), videos.RED, seconds=1)
    for partial in ("clip.mp4.part", "clip2.MP4.crdownload", "clip3.mkv.partial"):
        videos.write_truncated(str(media / partial), cam)
    for copy in ("$RECYCLE.BIN/S-1-5-21/$RAB12CD.mp4", "@eaDir/CAM.MOV/SYNOPHOTO_FILM_M.mp4", "#recycle/old.mp4",
                 "System Volume Information/x.mp4", "movie.mp4.download/movie.mp4"):  # the last: Safari's
        videos.write_solid(str(media / copy), videos.GREEN, seconds=1)
    videos.write_truncated(str(media / "._CAM.MOV"), cam)  # a macOS resource fork
    (media / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (media / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))

    found = discover(str(media))
    assert [c.path for c in found.candidates] == [cam] and found.unreadable == []
    assert {os.path.basename(p) for p in found.rejected} == {
        "clip.mp4.part", "clip2.MP4.crdownload", "clip3.mkv.partial", "Thumbs.db"}
    # Named on the command line, a partial file is read as any file named there.
    assert [c.path for c in discover(str(media / "clip.mp4.part")).candidates] == [str(media / "clip.mp4.part")]
    # A row an earlier run made of one goes when its folder is indexed.
    assert main(["index", str(media / "clip.mp4.part"), "--library", library, *HIST]) == 0
    capsys.readouterr()
    assert main(["index", str(media), "--library", library, *HIST]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("indexed 1 files (1 clips), 0 unchanged, 0 failed, 1 removed in ") and err == ""


@pytest.mark.usefixtures("one_faiss_thread")
def test_a_file_or_folder_deleted_during_the_walk_is_gone_not_unreadable(tmp_path, capsys, monkeypatch):
    """Deleted by another program after its folder was listed, it was reported `unreadable: ...: No such file or
    directory` and counted as kept as it was, while the run removed it."""
    import index.discovery
    from vmm.cli import main
    media, library = tmp_path / "media", str(tmp_path / "lib")
    (media / "z-later").mkdir(parents=True)
    for name, colour in (("a.mp4", videos.RED), ("b.mp4", videos.GREEN), ("z-later/c.mp4", videos.BLUE)):
        videos.write_solid(str(media / name), colour, seconds=1)
    assert main(["index", str(media), "--library", library, *HIST]) == 0
    capsys.readouterr()
    classify = index.discovery.classify_file

    def deleting(path, explicit=False):
        if path == str(media / "a.mp4"):  # root's files come after its listing and before z-later is listed
            os.remove(media / "b.mp4")
            os.remove(media / "z-later" / "c.mp4")
            os.rmdir(media / "z-later")
        return classify(path, explicit)

    monkeypatch.setattr(index.discovery, "classify_file", deleting)
    assert main(["index", str(media), "--library", library, *HIST]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("indexed 0 files (0 clips), 1 unchanged, 0 failed, 2 removed in ") and err == ""


def test_the_library_is_not_walked_under_another_path(tmp_path):
    """The library named through a link to the folder indexed: its files were read as candidates."""
    from index.ingest import build_library
    from index.encoder import ColorHistogramEncoder
    (tmp_path / "vids").mkdir()
    red = videos.write_solid(str(tmp_path / "vids" / "red.mp4"), videos.RED, seconds=1)
    (tmp_path / "link").symlink_to(tmp_path / "vids")
    library = str(tmp_path / "link" / "lib")
    build_library([str(tmp_path / "vids")], library, ColorHistogramEncoder(), workers=0, progress=False)
    found = discover([str(tmp_path / "vids")], exclude=[library])
    assert [c.path for c in found.candidates] == [red] and found.rejected == set()
