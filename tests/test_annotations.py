"""Annotation loading: official texts / ground truth per protocol, and clear errors on bad files."""
import json
import os
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from retrieval.annotations import DATASETS, DatasetProtocol, extension_hint, get_protocol, load_retrieval_dataset
from vmm.errors import VmmError


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory) -> Path:
    """A real 4-frame 32x32 H.264 clip written with PyAV."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_set(root: Path, tiny_video: Path, items: list, present: list[str] | None = None) -> Path:
    """Write `items` as the annotation JSON and copy the clip to every listed (or `present`) video."""
    for rel in present if present is not None else [i["video"] for i in items]:
        target = root / "videos" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_video, target)
    (root / "videos").mkdir(exist_ok=True)
    anno = root / "test.json"
    anno.write_text(json.dumps(items), encoding="utf-8")
    return anno


def test_protocol_table_matches_the_official_zero_shot_configs():
    assert {n: (p.paragraph, p.max_text_len, p.trim_seconds, p.num_frames) for n, p in DATASETS.items()} == {
        "msrvtt": (False, 32, None, 8),
        "didemo": (True, 64, 30.0, 8),
        "anet": (True, 150, None, 8),
        "lsmdc": (False, 96, None, 8),
        "msvd": (False, 64, None, 8),
    }
    assert DATASETS["msrvtt"].annotation_file == "msrvtt_ret_test1k.json"
    assert get_protocol("MSRVTT") is DATASETS["msrvtt"]
    custom = DatasetProtocol("mine", paragraph=False, max_text_len=40, trim_seconds=None)
    assert get_protocol(custom) is custom
    with pytest.raises(VmmError, match="unknown dataset 'kinetics'; choose one of msrvtt, didemo"):
        get_protocol("kinetics")


def test_msrvtt_one_caption_per_video_cleaned_in_file_order(tmp_path, tiny_video):
    items = [
        {"video": "video9770.mp4", "caption": "A person is connecting something to system.", "duration": 10.8},
        {"video": "video7020.mp4", "caption": "A woman's <PERSON> talks -- loudly!", "extra": [1, 2]},
        {"video": "sub/video0001.mp4", "caption": "Dogs (two) run"},
    ]
    anno = make_set(tmp_path, tiny_video, items)
    ds = load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    assert ds.videos == [tmp_path / "videos" / i["video"] for i in items]
    assert all(p.stat().st_size > 0 for p in ds.videos)
    assert ds.texts == [
        "a person is connecting something to system",
        "a womans person talks loudly",
        "dogs two run",
    ]
    assert ds.txt2vid == [0, 1, 2] and ds.vid2txt == [[0], [1], [2]]
    assert ds.missing == [] and ds.protocol.name == "msrvtt" and ds.annotation_file == anno


def test_several_captions_become_several_texts_of_one_video(tmp_path, tiny_video):
    items = [
        {"video": "a.avi", "caption": ["A man sings.", "Someone is singing", "a man sings"]},
        {"video": "b.avi", "caption": "A cat sleeps."},
        {"video": "c.avi", "caption": ["x-ray", "y/z"]},
    ]
    anno = make_set(tmp_path, tiny_video, items)
    for name in ("msvd", "msrvtt", "lsmdc"):
        ds = load_retrieval_dataset(anno, tmp_path / "videos", name)
        assert ds.texts == ["a man sings", "someone is singing", "a man sings", "a cat sleeps", "x ray", "y z"]
        assert ds.txt2vid == [0, 0, 0, 1, 2, 2]
        assert ds.vid2txt == [[0, 1, 2], [3], [4, 5]]


def test_paragraph_datasets_join_sentences_with_a_space_before_cleaning(tmp_path, tiny_video):
    items = [
        {"video": "v1.mp4", "caption": ["The man walks in.", "", "He sits down!"]},
        {"video": "v2.mp4", "caption": ["A  dog-barks", "at the mailman."]},
        {"video": "v3.mp4", "caption": "A single sentence, as a string."},
    ]
    anno = make_set(tmp_path, tiny_video, items)
    for name in ("didemo", "anet"):
        ds = load_retrieval_dataset(anno, tmp_path / "videos", name)
        # Joining first means the empty sentence's double space collapses, as in the official code.
        assert ds.texts == [
            "the man walks in he sits down",
            "a dog barks at the mailman",
            "a single sentence as a string",  # not "a   s i n g l e ..." (the official join on a str)
        ]
        assert ds.txt2vid == [0, 1, 2] and ds.vid2txt == [[0], [1], [2]]


def test_missing_videos_are_an_error_naming_them(tmp_path, tiny_video):
    items = [{"video": f"v{i}.mp4", "caption": f"caption {i}"} for i in range(6)]
    anno = make_set(tmp_path, tiny_video, items, present=["v0.mp4", "v2.mp4"])
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    message = str(err.value)
    assert "\n" not in message
    assert "4 of 6 videos listed in" in message and str(anno) in message
    assert "v1.mp4" in message and "allow_missing=True" in message and ", ..." in message


def test_allow_missing_drops_those_items_and_reports_them(tmp_path, tiny_video):
    items = [
        {"video": "v0.mp4", "caption": ["zero a", "zero b"]},
        {"video": "v1.mp4", "caption": ["one a"]},
        {"video": "v2.mp4", "caption": ["two a", "two b"]},
    ]
    anno = make_set(tmp_path, tiny_video, items, present=["v0.mp4", "v2.mp4"])
    ds = load_retrieval_dataset(anno, tmp_path / "videos", "msvd", allow_missing=True)
    assert ds.missing == [tmp_path / "videos" / "v1.mp4"]
    assert ds.videos == [tmp_path / "videos" / "v0.mp4", tmp_path / "videos" / "v2.mp4"]
    assert ds.texts == ["zero a", "zero b", "two a", "two b"]
    assert ds.txt2vid == [0, 0, 1, 1] and ds.vid2txt == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('[{"video": "a.mp4", "caption": "x"},]', r"is not valid JSON \(Expecting value at line 1 column 37\)"),
        ('{"video": "a.mp4", "caption": "x"}', r"expected a JSON list .* got a dict \(docs/evaluation\.md section 2\)$"),
        # the MSR-VTT release's own file: "got a dict" left the user to find which of their files to pass
        ('{"info": {}, "videos": [{"video_id": "video0"}], "sentences": [{"caption": "a", "video_id": "video0"}]}',
         r"expected a JSON list .*, MSR-VTT's own MSRVTT_data\.json; use the 1k-A test list msrvtt_ret_test1k\.json "
         r"\(docs/evaluation\.md section 2\)$"),
        ("[]", "contains no items"),
        ('["a.mp4"]', "item 0 is a str, expected an object with 'video' and 'caption'"),
        ('[{"video": "a.mp4", "caption": "x"}, {"caption": "y"}]', "item 1 needs a non-empty string 'video'"),
        ('[{"image": "a.jpg", "caption": "y"}]', "item 0 needs a non-empty string 'video'"),
        ('[{"video": "a.mp4", "caption": null}]', r"item 0 \(a.mp4\) needs 'caption' as a string or a list of strings, "
                                               "got None"),
        # another toolkit's keys: "got None" had the user look for a null that the file does not have
        ('[{"video": "a.mp4", "captions": ["x"]}]', r"item 0 \(a.mp4\) needs 'caption' as a string or a list of "
                                                   r"strings; it has no 'caption' key \(its keys: video, captions\)$"),
        ('[{"video_id": "video9770", "sentence": "x"}]', r"item 0 needs a non-empty string 'video' \(relative video "
                                                        r"path\); it has no 'video' key \(its keys: video_id, sentence\)$"),
        ("[{}]", r"item 0 needs a non-empty string 'video' \(relative video path\); it has no 'video' key \(its keys: "
                 r"none\)$"),
        ('[{"video": "a.mp4", "caption": 3}]', "needs 'caption' as a string or a list of strings, got 3"),
        ('[{"video": "a.mp4", "caption": ["ok", 7]}]', "needs 'caption' as a string or a list of strings"),
        ('[{"video": "a.mp4", "caption": []}]', r"item 0 \(a.mp4\) has an empty 'caption' list"),
        # a damaged entry: vmm eval --json resolved it and ended in "ValueError: embedded null byte"
        ('[{"video": "a\\u0000.mp4", "caption": "x"}]', r"item 0 has the 'video' entry 'a\\x00.mp4', with a NUL "
                                                          r"character that no file name can hold; the file is damaged"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, content, expected):
    (tmp_path / "videos").mkdir()
    anno = tmp_path / "bad.json"
    anno.write_text(content, encoding="utf-8")
    with pytest.raises(VmmError, match=expected) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    assert str(anno) in str(err.value) and "\n" not in str(err.value)


def test_unreadable_paths_give_clear_errors(tmp_path, tiny_video):
    with pytest.raises(VmmError, match="does not exist; check the path"):
        load_retrieval_dataset(tmp_path / "nope.json", tmp_path, "msrvtt")
    with pytest.raises(VmmError, match="is a directory"):
        load_retrieval_dataset(tmp_path, tmp_path, "msrvtt")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VmmError, match="is not UTF-8 text"):
        load_retrieval_dataset(binary, tmp_path, "msrvtt")
    anno = make_set(tmp_path, tiny_video, [{"video": "a.mp4", "caption": "x"}])
    with pytest.raises(VmmError, match="videos directory .*elsewhere does not exist"):
        load_retrieval_dataset(anno, tmp_path / "elsewhere", "msrvtt")


def test_docstring_examples_run():
    import doctest

    import retrieval.annotations

    result = doctest.testmod(retrieval.annotations)
    assert result.attempted > 0 and result.failed == 0


def test_a_byte_order_mark_is_read_as_utf8(tmp_path, tiny_video):
    """JSON saved by Windows editors starts with a UTF-8 BOM; it was refused as 'not valid JSON'."""
    anno = make_set(tmp_path, tiny_video, [{"video": "v0.mp4", "caption": "Caf\u00e9 cr\u00e8me."}])
    anno.write_bytes(b"\xef\xbb\xbf" + anno.read_bytes())
    assert load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt").texts == ["caf\u00e9 cr\u00e8me"]


def test_a_training_list_given_as_test_list_names_the_test_file(tmp_path, tiny_video):
    """msrvtt_ret_train9k.json has one item per caption: nearly every item repeats a video."""
    items = [{"video": f"v{v}.mp4", "caption": f"caption {c} of video {v}"} for v in range(5) for c in range(4)]
    anno = make_set(tmp_path, tiny_video, items).rename(tmp_path / "msrvtt_ret_train9k.json")
    with pytest.raises(VmmError, match=r"item 1 lists video 'v0.mp4' again \(first at item 0; 15 of 20 items repeat "
                                       r"a video\).*looks like a training list .*pass the test file "
                                       r"msrvtt_ret_test1k.json$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    # The user's own videos (the README evaluates them as msrvtt) have no test file to pass instead of theirs.
    anno = make_set(tmp_path, tiny_video, items)
    with pytest.raises(VmmError, match=r"list each video once, with all its captions in one list; this looks like a "
                                       r"training list \(one item per caption\), merge each video's items into one$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    # Three items of one video are a hand-made slip, too few to call a training list.
    anno = make_set(tmp_path, tiny_video, items[:3])
    with pytest.raises(VmmError, match=r"item 1 lists video 'v0.mp4' again") as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    assert "looks like a training list" not in str(err.value)
    # One slip in a test file is not a training list: no such hint.
    anno = make_set(tmp_path, tiny_video, [*items[::4], {"video": "v1.mp4", "caption": "again"}])
    with pytest.raises(VmmError, match=r"item 5 lists video 'v1.mp4' again") as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    assert "looks like a training list" not in str(err.value)


def test_an_annotation_file_that_cannot_be_opened_is_one_line(tmp_path):
    """A symlink loop (or a file without read permission) was an OSError traceback, not a VmmError."""
    (tmp_path / "loop_a.json").symlink_to(tmp_path / "loop_b.json")
    (tmp_path / "loop_b.json").symlink_to(tmp_path / "loop_a.json")
    with pytest.raises(VmmError, match=r"annotation file .*loop_a.json cannot be read \(Too many levels of symbolic "
                                       r"links\); check the path and its permissions$"):
        load_retrieval_dataset(tmp_path / "loop_a.json", tmp_path, "msrvtt")


@pytest.mark.parametrize("listed, on_disk", [("v0", "v0.mp4"), ("v0.mp4", "v0.mkv"), ("sub/v0.avi", "sub/v0.mp4"),
                                             ("V0.mp4", "v0.mp4"), ("v0", "V0.MP4"), ("sub/v0.mp4", "sub/V0.mp4")])
def test_a_video_listed_with_another_extension_names_the_file_on_disk(tmp_path, tiny_video, listed, on_disk):
    """The folder is right and the names are not: pointing --videos elsewhere would not help. Letter case too: an
    entry written on macOS or Windows ('V0.mp4') opened v0.mp4 there, and was told to point --videos elsewhere."""
    anno = make_set(tmp_path, tiny_video, [{"video": listed, "caption": "x"}, {"video": "v1.mp4", "caption": "y"}],
                    present=[on_disk, "v1.mp4"])
    if (tmp_path / "videos" / listed).is_file():
        pytest.skip("this file system ignores letter case (macOS, Windows): the entry opens the file")
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")
    message = str(err.value)
    assert f"1 of 2 videos listed in {anno} are missing ({tmp_path / 'videos' / listed});" in message
    assert message.endswith(f"{(tmp_path / 'videos' / on_disk).parent} has {Path(on_disk).name} instead: the 'video' "
                            "entries must name the files exactly, letter case and extension included; fix them or "
                            "rename the files")
    assert "POINT ELSEWHERE" not in message
    # A video that is simply not there keeps the caller's fix.
    anno = make_set(tmp_path / "other", tiny_video, [{"video": "v9.mp4", "caption": "x"}], present=["v1.mp4"])
    with pytest.raises(VmmError, match="POINT ELSEWHERE$"):
        load_retrieval_dataset(anno, tmp_path / "other" / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")


@pytest.mark.skipif(os.sep == "\\", reason="Windows reads '\\' as a separator: the entry names the video there")
def test_a_video_listed_with_windows_separators_says_so(tmp_path, tiny_video):
    """'all\\v0.mp4' (a custom file written on Windows) is one file name elsewhere: the error said to point the
    videos folder elsewhere, though the folder was right."""
    items = [{"video": "all\\v0.mp4", "caption": "x"}, {"video": "all/v1.mp4", "caption": "y"}]
    anno = make_set(tmp_path, tiny_video, items, present=["all/v0.mp4", "all/v1.mp4"])
    with pytest.raises(VmmError, match=r"are missing \(.*\); 'all\\v0.mp4' is written with Windows '\\' separators; "
                                       r"write the 'video' entries with '/', which every system reads$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")


@pytest.mark.parametrize("listed", ["/data/MSRVTT/videos/all/v0.mp4", "C:\\data\\MSRVTT\\v0.mp4", "D:/MSRVTT/v0.mp4"])
def test_a_video_listed_by_an_absolute_path_says_the_folder_is_not_used(tmp_path, tiny_video, listed):
    """Entries written with another machine's absolute paths ignore the videos folder, yet the error said to point
    it at the folder that holds the videos, which cannot help."""
    anno = make_set(tmp_path, tiny_video, [{"video": listed, "caption": "x"}, {"video": "v1.mp4", "caption": "y"}],
                    present=["v0.mp4", "v1.mp4"])
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")
    assert str(err.value).endswith(f"; '{listed}' is an absolute path, so the videos folder is not used; write the "
                                   "'video' entries relative to that folder")
    # the same fix when --allow-missing finds none of them
    assert extension_hint(tmp_path / "videos" / listed, tmp_path / "videos").startswith(f"'{listed}' is an absolute")
    assert extension_hint(tmp_path / "videos" / "v9.mp4", tmp_path / "videos") == ""  # just not there


@pytest.mark.parametrize("listed, scheme", [("https://example.org/clips/v0.mp4", "https"),
                                            ("file:///data/clips/v0.mp4", "file"), ("s3://bucket/v0.mp4", "s3")])
def test_a_video_listed_by_url_says_the_entries_must_be_files(tmp_path, tiny_video, listed, scheme):
    """Joined to the folder a URL is a path through a folder named 'https:', and the error said to point the videos
    folder at the folder that holds the videos."""
    anno = make_set(tmp_path, tiny_video, [{"video": listed, "caption": "x"}, {"video": "v1.mp4", "caption": "y"}],
                    present=["v1.mp4"])
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")
    assert str(err.value).endswith(f"; the entry of v0.mp4 is a {scheme} URL, not a file path; download the videos "
                                   "and write the 'video' entries relative to the videos folder")
    # a folder whose name merely has a colon in it is no URL
    assert extension_hint(tmp_path / "videos" / "take:2" / "v0.mp4", tmp_path / "videos") == ""


def test_a_videos_folder_one_level_off_names_the_folder_that_holds_them(tmp_path, tiny_video):
    """MSRVTT.zip unpacks to MSRVTT/videos/all: given the folder above or below the one the entries are relative to,
    the error only said to point the videos folder 'at the folder that holds them'."""
    items = [{"video": f"video{i}.mp4", "caption": "x"} for i in range(3)]
    anno = make_set(tmp_path, tiny_video, items, present=[f"all/video{i}.mp4" for i in range(3)])
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")
    assert str(err.value).endswith(f"; {tmp_path / 'videos' / 'all'} holds video0.mp4: pass that folder as the "
                                   "videos folder")
    prefixed = tmp_path / "prefixed.json"
    prefixed.write_text(json.dumps([{"video": f"all/video{i}.mp4", "caption": "x"} for i in range(3)]))
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(prefixed, tmp_path / "videos" / "all", "msrvtt", missing_hint="POINT ELSEWHERE")
    assert str(err.value).endswith(f"; {tmp_path / 'videos'} holds all/video0.mp4: pass that folder as the videos "
                                   "folder")
    # Where the other videos are found, a copy of the missing one in a subfolder says nothing about the folder.
    shutil.copyfile(tiny_video, tmp_path / "videos" / "video1.mp4")
    shutil.copyfile(tiny_video, tmp_path / "videos" / "video2.mp4")
    with pytest.raises(VmmError, match=r"are missing \(.*video0\.mp4\); POINT ELSEWHERE$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")


def test_a_video_that_is_a_dangling_symbolic_link_names_its_target(tmp_path, tiny_video):
    """A folder of links into a drive that is not mounted: the error said to point the videos folder at the folder
    that holds them, which is the one given (`ls` lists every name)."""
    anno = make_set(tmp_path, tiny_video, [{"video": "v0.mp4", "caption": "x"}, {"video": "v1.mp4", "caption": "y"}],
                    present=["v1.mp4"])
    gone = tmp_path / "unmounted" / "v0.mp4"
    (tmp_path / "videos" / "v0.mp4").symlink_to(gone)
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")
    assert str(err.value).endswith(f"; {tmp_path / 'videos' / 'v0.mp4'} is a symbolic link to {gone}, which is not a "
                                   "file (a drive not mounted, or a target moved or deleted?); restore the target or "
                                   "re-create the link")
    # once the target is back, the link is a video like any other
    gone.parent.mkdir()
    shutil.copyfile(tiny_video, gone)
    assert load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt").videos == [tmp_path / "videos" / "v0.mp4",
                                                                                  tmp_path / "videos" / "v1.mp4"]


def test_a_video_named_in_another_unicode_form_says_so(tmp_path, tiny_video):
    """Files copied from macOS keep decomposed accents ('cafe' + U+0301); the JSON has the composed U+00E9. Both
    print alike, and the error said to point the videos folder at the folder that holds them: the one given."""
    import unicodedata
    listed, on_disk = (unicodedata.normalize(form, "caf\u00e9 \u00fc.mp4") for form in ("NFC", "NFD"))
    anno = make_set(tmp_path, tiny_video, [{"video": listed, "caption": "x"}, {"video": "v1.mp4", "caption": "y"}],
                    present=[on_disk, "v1.mp4"])
    with pytest.raises(VmmError) as err:
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")
    assert str(err.value).endswith(f"; {tmp_path / 'videos'} has {ascii(on_disk)}, the entry's {ascii(listed)} in "
                                   "another Unicode form (macOS writes accents decomposed); write the 'video' entries "
                                   "with the files' exact characters or rename the files")
    # with another extension as well, the extension is what the error names
    (tmp_path / "videos" / on_disk).rename(tmp_path / "videos" / on_disk.replace(".mp4", ".mkv"))
    with pytest.raises(VmmError, match=r"has cafe\u0301 u\u0308\.mkv instead: the 'video' entries must name the"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", missing_hint="POINT ELSEWHERE")


def test_a_video_name_too_long_for_the_file_system_is_a_missing_video(tmp_path, tiny_video):
    """A caption put in the 'video' field: the file system's ENAMETOOLONG escaped as a traceback."""
    long_name = "a man is cooking in a kitchen and " * 10
    anno = make_set(tmp_path, tiny_video, [{"video": long_name, "caption": "v0.mp4"},
                                           {"video": "v1.mp4", "caption": "y"}], present=["v1.mp4"])
    with pytest.raises(VmmError, match="1 of 2 videos listed in .* are missing"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    ds = load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt", allow_missing=True)
    assert ds.missing == [tmp_path / "videos" / long_name] and ds.texts == ["y"]


@pytest.mark.parametrize("caption", ["\t", "\u00a0", "!\t?", "\u200b", "\ufeff\u0301", "\ufffd"])
def test_a_caption_of_only_a_tab_or_no_break_space_is_empty(tmp_path, tiny_video, caption):
    """Cleaning strips spaces only: these survived it and were encoded as [CLS] [SEP], an empty query (zero-width
    characters, a lone accent and U+FFFD too: the tokenizer drops them)."""
    anno = make_set(tmp_path, tiny_video, [{"video": "v0.mp4", "caption": ["a dog", caption]}])
    with pytest.raises(VmmError, match=r"item 0 \(v0.mp4\) has the caption .* with no words left after cleaning"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msvd")


@pytest.mark.parametrize("file_name, dataset, owner", [("msrvtt_ret_test1k.json", "didemo", "msrvtt"),
                                                      ("didemo_ret_test.json", "msrvtt", "didemo"),
                                                      ("anet_ret_val.json", "msvd", "anet")])
def test_another_datasets_official_file_is_refused(tmp_path, tiny_video, file_name, dataset, owner):
    """MSRVTT's file evaluated as DiDeMo was joined and truncated the DiDeMo way and compared with DiDeMo's
    published row, reported comparable."""
    anno = make_set(tmp_path, tiny_video, [{"video": "v0.mp4", "caption": ["a dog", "runs"]}])
    anno = anno.rename(anno.with_name(file_name))
    anno_re = re.escape(str(anno))
    with pytest.raises(VmmError, match=rf"^annotation file {anno_re} is for {owner}, not {dataset}; evaluate it as "
                                       rf"{owner}, or pass the {dataset} test file {DATASETS[dataset].annotation_file}$"):
        load_retrieval_dataset(anno, tmp_path / "videos", dataset)
    assert load_retrieval_dataset(anno, tmp_path / "videos", owner).videos == [tmp_path / "videos" / "v0.mp4"]
    # a custom protocol chooses its own files
    custom = DatasetProtocol("mine", paragraph=True, max_text_len=40, trim_seconds=None)
    assert load_retrieval_dataset(anno, tmp_path / "videos", custom).texts == ["a dog runs"]


@pytest.mark.parametrize("content, where", [
    ("key,vid_key,video_id,sentence\nret0,msr7579,video7579,a girl puts a sweater on a dog\n", "line 1 column 1"),
    ('{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4", "caption": "y"}\n', "line 2 column 1"),  # JSON Lines
])
def test_another_file_format_names_the_format_read(tmp_path, content, where):
    """The MSRVTT 1k-A CSV (CLIP4Clip's MSRVTT_JSFUSION_test.csv) or JSON Lines got only 'not valid JSON (... at
    line 1 column 1)': nothing at that place to fix, the file is of another format."""
    (tmp_path / "videos").mkdir()
    anno = tmp_path / "MSRVTT_JSFUSION_test.csv"
    anno.write_text(content, encoding="utf-8")
    anno_re = re.escape(str(anno))
    with pytest.raises(VmmError, match=rf"^annotation file {anno_re} is not valid JSON \(.* at {where}\); expected the "
                                       r"official JSON list of \{\"video\", \"caption\"\} objects \(e.g. "
                                       r"msrvtt_ret_test1k.json\), see docs/evaluation.md section 2$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    # a JSON list broken in the middle is fixed where it breaks: no format hint
    anno.write_text('[{"video": "a.mp4", "caption": "x"},\n {"video": "b.mp4" "caption": "y"}]', encoding="utf-8")
    with pytest.raises(VmmError, match=r"\(Expecting ',' delimiter at line 2 column 20\)$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")


def test_a_latin1_file_names_the_line_and_the_fix(tmp_path, tiny_video):
    """The error gave a byte offset and no fix: an editor goes to lines, and the fix is to re-save."""
    items = [{"video": f"v{i}.mp4", "caption": f"caption {i}"} for i in range(30)]
    items[20]["caption"] = "Caf\u00e9 cr\u00e8me"
    anno = make_set(tmp_path, tiny_video, items)
    text = json.dumps(items, indent=1, ensure_ascii=False)
    line = text[:text.index("Caf")].count("\n") + 1
    anno_re = re.escape(str(anno))
    for bom in (b"", b"\xef\xbb\xbf"):
        anno.write_bytes(bom + text.encode("latin-1"))
        with pytest.raises(VmmError, match=rf"^annotation file {anno_re} is not UTF-8 text \(invalid continuation byte "
                                           rf"at line {line}\); save it as UTF-8$"):
            load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
    anno.write_bytes(text.encode("utf-8"))
    assert load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt").texts[20] == "caf\u00e9 cr\u00e8me"


@pytest.mark.parametrize("end, what", [
    ("clip number 7", "Unterminated string starting"),  # was "starting at at line"
    ('"video29.mp4",', "Expecting property name enclosed in double quotes"),
    ("10.5\n }", "Expecting ',' delimiter"),  # the last item whole, the closing bracket lost
    ("[", "Expecting value"),
])
def test_a_file_cut_short_says_so(tmp_path, end, what):
    """An interrupted download or copy of the test file got 'not valid JSON (Unterminated string starting at at line
    .. column ..)': a place to fix, in a file that has nothing to fix there, only its end missing."""
    (tmp_path / "videos").mkdir()
    anno = tmp_path / "msrvtt_ret_test1k.json"
    text = json.dumps([{"video": f"video{i}.mp4", "caption": f"a clip number {i}", "duration": 10.5}
                       for i in range(30)], indent=1)
    anno.write_text(text[:text.rindex(end) + len(end)], encoding="utf-8")
    anno_re = re.escape(str(anno))
    with pytest.raises(VmmError, match=rf"^annotation file {anno_re} is not valid JSON \({what} at line \d+ column \d+"
                                       r"\); the file ends before its JSON does: it was cut short, download or copy "
                                       "it again$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")


@pytest.mark.parametrize("content", ["", " \n", "\ufeff"])
def test_an_empty_file_is_called_empty(tmp_path, content):
    """A 0-byte file (an interrupted download) was 'not valid JSON (Expecting value at line 1 column 1); expected the
    official JSON list': as if it held another format."""
    (tmp_path / "videos").mkdir()
    anno = tmp_path / "msrvtt_ret_test1k.json"
    anno.write_text(content, encoding="utf-8")
    anno_re = re.escape(str(anno))
    with pytest.raises(VmmError, match=rf"^annotation file {anno_re} is empty; download it again \(docs/evaluation.md "
                                       r"section 2\)$"):
        load_retrieval_dataset(anno, tmp_path / "videos", "msrvtt")
