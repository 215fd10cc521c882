"""Zero-shot retrieval test sets: per-dataset protocols and the annotation loader.

Annotation files are the official (VindLU/UMT) JSON lists of
``{"video": relative path, "caption": str | [str], ...}``; extra keys are ignored.
:func:`load_retrieval_dataset` builds the same texts and ground truth as the
official ``VidTxtRetEvalDataset``:

- each list item is one video, in file order;
- normal datasets: every caption of an item is its own text (several captions
  give a video several ground-truth texts, e.g. MSVD);
- paragraph datasets (DiDeMo, ActivityNet): the item's sentences are joined
  with a single space into one paragraph, which is then cleaned;
- every text is cleaned with :func:`vmm.data.text.clean_caption` (no word limit;
  truncation to ``max_text_len`` happens in the tokenizer).
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from vmm.data.text import clean_caption, has_words
from vmm.errors import VmmError


@dataclass(frozen=True)
class DatasetProtocol:
    """How the official zero-shot evaluation treats one dataset.

    ``trim_seconds``: only frames of the first N seconds are sampled (official
    ``trimmed30``: when the video is longer, its length becomes int(N * fps) frames).
    ``annotation_file``: the official test annotation file name.
    """

    name: str
    paragraph: bool
    max_text_len: int
    trim_seconds: float | None
    num_frames: int = 8
    annotation_file: str = ""


DATASETS: dict[str, DatasetProtocol] = {
    "msrvtt": DatasetProtocol("msrvtt", False, 32, None, annotation_file="msrvtt_ret_test1k.json"),
    "didemo": DatasetProtocol("didemo", True, 64, 30.0, annotation_file="didemo_ret_test.json"),
    "anet": DatasetProtocol("anet", True, 150, None, annotation_file="anet_ret_val.json"),
    "lsmdc": DatasetProtocol("lsmdc", False, 96, None, annotation_file="lsmdc_ret_test_1000.json"),
    "msvd": DatasetProtocol("msvd", False, 64, None, annotation_file="msvd_ret_test.json"),
}


def get_protocol(name: str | DatasetProtocol) -> DatasetProtocol:
    """Protocol for a dataset name (case-insensitive); a protocol passes through.

    >>> get_protocol("DiDeMo").trim_seconds
    30.0
    """
    if isinstance(name, DatasetProtocol):
        return name
    key = str(name).lower()
    if key not in DATASETS:
        raise VmmError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key]


@dataclass
class RetrievalDataset:
    """Videos, cleaned texts and ground truth of one test set, in official order.

    ``txt2vid[t]`` is the video of text t; ``vid2txt[v]`` lists the texts of video v.
    ``missing`` lists the videos of the file that were not found and were dropped
    (only with ``allow_missing=True``; empty otherwise).
    """

    videos: list[Path]
    texts: list[str]
    txt2vid: list[int]
    vid2txt: list[list[int]]
    protocol: DatasetProtocol
    annotation_file: Path
    missing: list[Path] = field(default_factory=list)


def _read_json_list(path: Path) -> list:
    try:
        # utf-8-sig: JSON saved by Windows editors starts with a byte-order mark, which plain utf-8 rejects.
        with path.open("r", encoding="utf-8-sig") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise VmmError(f"annotation file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise VmmError(f"annotation file {path} is a directory; pass the .json file inside it") from None
    except OSError as e:  # no permission, a symlink loop, a socket: one line on the command line, not a traceback
        raise VmmError(f"annotation file {path} cannot be read ({e.strerror or e}); check the path and its "
                       "permissions") from None
    except UnicodeDecodeError as e:
        # A line is what an editor can go to (a byte offset is not), and the fix is to re-save, e.g. from Latin-1.
        line = e.object[:e.start].count(b"\n") + 1
        raise VmmError(f"annotation file {path} is not UTF-8 text ({e.reason} at line {line}); save it as UTF-8"
                       ) from None
    except json.JSONDecodeError as e:
        # An interrupted download or copy leaves an empty file, or one that stops inside the list: nothing in it to fix.
        if not e.doc.strip():
            raise VmmError(f"annotation file {path} is empty; download it again (docs/evaluation.md section 2)"
                           ) from None
        if not e.doc[e.pos:].strip() or e.msg.startswith("Unterminated string"):
            hint = "; the file ends before its JSON does: it was cut short, download or copy it again"
        # Not JSON from its first character (a CSV such as MSRVTT_JSFUSION_test.csv) or one object per line (JSON
        # Lines): no line and column to fix, the user has another format than the one read here.
        elif e.pos == 0 or (e.msg == "Extra data" and e.colno == 1):
            hint = ("; expected the official JSON list of {\"video\", \"caption\"} objects "
                    "(e.g. msrvtt_ret_test1k.json), see docs/evaluation.md section 2")
        else:
            hint = ""
        # Some messages end in "at" ("Unterminated string starting at"), which the position follows.
        what = e.msg.removesuffix(" at")
        raise VmmError(f"annotation file {path} is not valid JSON ({what} at line {e.lineno} column {e.colno}){hint}"
                       ) from None
    if not isinstance(data, list):
        # MSR-VTT's own release file (all 10k videos, their 200k sentences by video_id) is what users have at hand
        what = ("MSR-VTT's own MSRVTT_data.json; use the 1k-A test list msrvtt_ret_test1k.json"
                if isinstance(data, dict) and {"videos", "sentences"} <= data.keys() else f"got a {type(data).__name__}")
        raise VmmError(f"annotation file {path}: expected a JSON list of {{\"video\", \"caption\"}} objects, {what} "
                       "(docs/evaluation.md section 2)")
    if not data:
        raise VmmError(f"annotation file {path} contains no items")
    return data


def _found(item: dict, key: str) -> str:
    """What an item holds under ``key``; an absent key lists the keys there (another toolkit's 'video_id',
    'sentence'), where "got None" sent the user looking for a null that the file does not have."""
    if key in item:
        return f", got {item[key]!r:.80}"
    keys = ", ".join(map(str, list(item)[:8])) + (", ..." if len(item) > 8 else "")
    return f"; it has no {key!r} key (its keys: {keys or 'none'})"


def _item_captions(path: Path, index: int, item: object) -> tuple[str, list[str]]:
    """Validate one annotation item; return its video path and caption list."""
    where = f"annotation file {path}: item {index}"
    if not isinstance(item, dict):
        raise VmmError(f"{where} is a {type(item).__name__}, expected an object with 'video' and 'caption'")
    video = item.get("video")
    if not isinstance(video, str) or not video:
        raise VmmError(f"{where} needs a non-empty string 'video' (relative video path){_found(item, 'video')}")
    if "\0" in video:  # no file name holds one: resolving the path (the output checks of vmm eval) raised ValueError
        raise VmmError(f"{where} has the 'video' entry {video!r:.80}, with a NUL character that no file name can "
                       "hold; the file is damaged, fix the entry")
    caption = item.get("caption")
    if isinstance(caption, str):
        return video, [caption]
    if isinstance(caption, list) and caption and all(isinstance(c, str) for c in caption):
        return video, caption
    if isinstance(caption, list) and not caption:
        raise VmmError(f"{where} ({video}) has an empty 'caption' list; every video needs a caption")
    raise VmmError(f"{where} ({video}) needs 'caption' as a string or a list of strings{_found(item, 'caption')}")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system (a caption in the 'video' field) names no video either
        return False


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: 'C:' is a Windows drive


def extension_hint(missing: Path, videos_dir: str | Path | None = None) -> str:
    """The fix when the missing video is there under another extension (or none) or letter case, e.g. 'video7' or
    'Video7.mp4' for video7.mp4, or when its entry uses Windows separators ('all\\video7.mp4', a file name with a
    backslash off Windows), or, given the ``videos_dir`` it was joined to, when its entry is an absolute path
    ('/data/v7.mp4', 'C:\\data\\v7.mp4') or a URL, or when it is there as a symbolic link whose target is not.

    Telling the user to point videos_dir elsewhere would be wrong then: the folder is right, the names are not.
    """
    entry = missing
    if videos_dir is not None and missing.is_relative_to(videos_dir):
        entry = missing.relative_to(videos_dir)
    # Joining drops the folder before a POSIX absolute entry; a Windows one ('C:\\...') stays a name off Windows.
    if videos_dir is not None and (entry.is_absolute() or PureWindowsPath(entry).drive):
        return (f"'{entry}' is an absolute path, so the videos folder is not used; write the 'video' entries "
                "relative to that folder")
    # A URL (https://host/v.mp4, file:///data/v.mp4) joined to the folder reads as a folder named 'https:', and the
    # error sent the user to look for the folder that holds the videos.
    if videos_dir is not None and len(entry.parts) > 1 and _URL_SCHEME.fullmatch(entry.parts[0]):
        return (f"the entry of {missing.name} is a {entry.parts[0][:-1]} URL, not a file path; download the videos "
                "and write the 'video' entries relative to the videos folder")
    try:  # a link whose target is gone (a drive not mounted, a moved dataset): the folder and the name are right
        target = os.readlink(missing)
    except OSError:  # not a link, or nothing there
        target = None
    if target is not None:
        return (f"{missing} is a symbolic link to {target}, which is not a file (a drive not mounted, or a target "
                "moved or deleted?); restore the target or re-create the link")
    if "\\" in missing.name and _is_file(missing.parent / missing.name.replace("\\", "/")):
        return (f"'{missing.name}' is written with Windows '\\' separators; write the 'video' entries with '/', "
                "which every system reads")
    # Compared in one Unicode form: names copied from macOS keep its decomposed accents, which the JSON rarely has.
    # And regardless of case: an entry written on macOS or Windows ('Video7.mp4' for video7.mp4) opens the file there.
    listed = {_nfc(missing.name).casefold(), _nfc(missing.stem).casefold()}
    try:
        others = sorted(entry.name for entry in os.scandir(missing.parent)
                        if _nfc(Path(entry.name).stem).casefold() in listed and entry.is_file())
    except OSError:
        return ""
    if not others:
        return ""
    if _nfc(others[0]) == _nfc(missing.name):
        return (f"{missing.parent} has {ascii(others[0])}, the entry's {ascii(missing.name)} in another Unicode "
                "form (macOS writes accents decomposed); write the 'video' entries with the files' exact characters "
                "or rename the files")
    return (f"{missing.parent} has {others[0]} instead: the 'video' entries must name the files exactly, "
            "letter case and extension included; fix them or rename the files")


def folder_hint(missing: Path, videos_dir: str | Path) -> str:
    """The fix when none of the videos is found because ``videos_dir`` is one level off: the folder above it or one
    below it holds the missing video's entry (MSRVTT/videos for entries 'all/video7.mp4' joined to
    MSRVTT/videos/all, or MSRVTT/videos/all for entries 'video7.mp4' joined to MSRVTT/videos). Only then: where
    most videos are found, a copy of one elsewhere says nothing about the folder.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "all").mkdir(); (root / "all" / "video7.mp4").touch()
    >>> folder_hint(root / "video7.mp4", root).replace(str(root), "ROOT")
    'ROOT/all holds video7.mp4: pass that folder as the videos folder'
    """
    base = Path(videos_dir)
    entry = missing.relative_to(base) if missing.is_relative_to(base) else Path(missing.name)
    try:
        below = sorted(Path(e.path) for e in os.scandir(base) if e.is_dir())
    except OSError:
        below = []
    holder = next((f for f in [base.parent, *below] if f != base and _is_file(f / entry)), None)
    return f"{holder} holds {entry}: pass that folder as the videos folder" if holder else ""


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def official_dataset_of(annotation_file: str | Path) -> str | None:
    """The official dataset whose file name ``annotation_file`` has (``<dataset>_ret_<split>.json``), else None.

    >>> official_dataset_of("anno/didemo_ret_val.json"), official_dataset_of("my_clips.json")
    ('didemo', None)
    """
    name = Path(annotation_file).name.lower()
    return next((other for other in DATASETS if name.startswith(f"{other}_ret_")), None)


def other_split_of(annotation_file: str | Path, protocol: DatasetProtocol) -> bool:
    """Whether ``annotation_file`` is named as another split of the protocol's dataset than its test file
    (didemo_ret_val.json): the published rows are measured on the test split only. A download's copy suffix
    (``msrvtt_ret_test1k (1).json``) still names the test file.

    >>> [other_split_of(name, DATASETS["didemo"]) for name in ("didemo_ret_val.json", "didemo_ret_test.json")]
    [True, False]
    """
    test_stem = Path(protocol.annotation_file).stem.lower()
    return (official_dataset_of(annotation_file) == protocol.name
            and not Path(annotation_file).name.lower().startswith(test_stem))


def _check_file_is_of(annotation_file: Path, protocol: DatasetProtocol) -> None:
    """Refuse another official dataset's file (msrvtt_ret_test1k.json evaluated as didemo).

    Its texts would be joined and truncated by the wrong protocol, and the numbers compared with the other
    dataset's published row, reported as comparable. A custom protocol may read any file.
    """
    if DATASETS.get(protocol.name) != protocol:
        return
    owner = official_dataset_of(annotation_file)
    if owner not in (None, protocol.name):
        raise VmmError(f"annotation file {annotation_file} is for {owner}, not {protocol.name}; "
                       f"evaluate it as {owner}, or pass the {protocol.name} test file {protocol.annotation_file}")


def load_retrieval_dataset(
    annotation_file: str | Path,
    videos_dir: str | Path,
    protocol: str | DatasetProtocol,
    allow_missing: bool = False,
    missing_hint: str = "point videos_dir at the folder that holds them or pass allow_missing=True to drop them",
) -> RetrievalDataset:
    """Load a test annotation file and build texts and ground truth the official way.

    Video paths are ``videos_dir / item["video"]``. Missing video files raise a
    :class:`VmmError` naming how many and which; with ``allow_missing=True`` those
    items (and their captions) are dropped and listed in ``.missing`` instead, and
    the numbers are then no longer comparable with published ones. ``missing_hint`` is the
    fix that error suggests (a command line names its own options there).

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("a.mp4", "b.mp4"): (d / name).touch()
    >>> _ = (d / "test.json").write_text(json.dumps([
    ...     {"video": "a.mp4", "caption": ["A dog runs.", "A dog plays!"]},
    ...     {"video": "b.mp4", "caption": "A cat-sleeps."}]))
    >>> ds = load_retrieval_dataset(d / "test.json", d, "msvd")
    >>> ds.texts, ds.txt2vid, ds.vid2txt
    (['a dog runs', 'a dog plays', 'a cat sleeps'], [0, 0, 1], [[0, 1], [2]])
    >>> load_retrieval_dataset(d / "test.json", d, "didemo").texts
    ['a dog runs a dog plays', 'a cat sleeps']
    """
    protocol = get_protocol(protocol)
    annotation_file = Path(annotation_file)
    videos_dir = Path(videos_dir)
    _check_file_is_of(annotation_file, protocol)
    items = [_item_captions(annotation_file, i, item) for i, item in enumerate(_read_json_list(annotation_file))]
    if not videos_dir.is_dir():
        problem = "is a file, not a folder" if videos_dir.exists() else "does not exist"
        raise VmmError(f"videos directory {videos_dir} {problem}; pass the folder that holds the videos")

    # One video listed twice would be two gallery entries competing for the same captions (each copy's match
    # ranks the other first), lowering every metric without a sign.
    first_at: dict[str, int] = {}
    repeats: list[tuple[int, str, int]] = []
    for i, (video, _) in enumerate(items):
        key = os.path.normpath(os.path.join(os.fspath(videos_dir), video))
        if key in first_at:
            repeats.append((i, video, first_at[key]))
        else:
            first_at[key] = i
    if repeats:
        i, video, first = repeats[0]
        # A training list (msrvtt_ret_train9k.json) has one item per caption, so most of its items repeat a video:
        # name the test file instead of asking the user to merge 180k items by hand. A list of the user's own videos
        # (evaluated as msrvtt, as the README does) has no test file to pass instead: it was sent to MSRVTT's.
        hint = ""
        if len(repeats) * 2 > len(items) >= 20:  # a handful of items repeating is a hand-made mistake
            hint = "; this looks like a training list (one item per caption), " + (
                f"pass the test file {protocol.annotation_file}" if official_dataset_of(annotation_file)
                and protocol.annotation_file else "merge each video's items into one")
        raise VmmError(f"annotation file {annotation_file}: item {i} lists video {video!r} again (first at item "
                       f"{first}; {len(repeats)} of {len(items)} items repeat a video); list each video once, with "
                       f"all its captions in one list{hint}")
    missing = [videos_dir / video for video, _ in items if not _is_file(videos_dir / video)]
    if missing and not allow_missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        fix = (extension_hint(missing[0], videos_dir)
               or (folder_hint(missing[0], videos_dir) if len(missing) == len(items) else "") or missing_hint)
        raise VmmError(f"{len(missing)} of {len(items)} videos listed in {annotation_file} are missing ({shown}); "
                       f"{fix}")
    missing_set = set(missing)

    dataset = RetrievalDataset([], [], [], [], protocol, annotation_file, missing)
    for i, (video, captions) in enumerate(items):
        path = videos_dir / video
        if path in missing_set:
            continue
        if protocol.paragraph:
            # A bare string is taken as a one-sentence paragraph; the official join would
            # put a space between its characters.
            captions = [" ".join(captions)]
        video_index = len(dataset.videos)
        dataset.videos.append(path)
        dataset.vid2txt.append([])
        for caption in captions:
            text = clean_caption(caption)
            # An empty query matches nothing in particular; dropping it would change the test set. Cleaning strips
            # spaces only, so a tab, a no-break space or a zero-width space is left over, which the tokenizer
            # reads as empty too.
            if not has_words(text):
                raise VmmError(f"annotation file {annotation_file}: item {i} ({video}) has the caption {caption!r:.40} "
                               "with no words left after cleaning; write the caption or remove it")
            dataset.vid2txt[video_index].append(len(dataset.texts))
            dataset.txt2vid.append(video_index)
            dataset.texts.append(text)
    return dataset
