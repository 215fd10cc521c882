"""The evaluation report: the dict an evaluation returns, its Markdown table, and the files written from it.

Outputs are checked before an evaluation starts and written atomically, so an hour-long run never ends by
overwriting an input, a file that no evaluation wrote, or half of an earlier report.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from retrieval.annotations import DATASETS, load_retrieval_dataset, other_split_of
from retrieval.metrics import to_official_keys
from retrieval.paper_numbers import OFFICIAL_TEST_TEXTS, OFFICIAL_TEST_VIDEOS, paper_delta, paper_row
from vmm.atomic import atomic_write_file
from vmm.errors import VmmError

if TYPE_CHECKING:  # retrieval.evaluate imports this module
    from retrieval.evaluate import EvalConfig

ROWS = ("emb", "rerank", "index")
OFFICIAL_RERANK_K = 128  # the official k_test


def build_report(config, dataset, protocol, listed, missing, rows, model, model_name, checkpoint, runtime,
                 timings, seconds) -> dict:
    """The JSON-ready report of one evaluation: its inputs, the three rows, the published row where the protocol is
    the official one, and ``not_comparable``: why the numbers are not comparable with that row (empty if they are)."""
    from vmm import __version__
    from vmm.models.persistence import weights_source
    img_size = model.cfg.vision.img_size
    weights = weights_source(model)
    released = _released_file(weights)
    # The released file the weights were loaded from decides the published row, else the checkpoint's name, else
    # the model name (a folder's): those two only look the row up, to say why it is not shown.
    looked_up = released or (Path(checkpoint).name if checkpoint else model_name)
    paper = paper_row(protocol.name, looked_up)
    if paper is None:
        not_comparable = [f"no published {protocol.name} numbers for {looked_up}"]
    else:
        # Published numbers exist only for the official protocol: then no paper row is shown.
        not_comparable = ([] if released else [_weights_change(weights, paper["corpus"])]) + _protocol_changes(
            config, dataset, protocol, img_size)
        if not_comparable:
            paper = None
        else:  # another part of the data: the paper row is shown beside it for reference
            not_comparable = _split_changes(config, dataset, protocol, listed, missing)
    report = {
        "dataset": protocol.name,
        "annotations": str(config.annotations),
        "videos_dir": str(config.videos),
        "model": model_name,
        "checkpoint": checkpoint,
        "weights_from": weights,
        "num_videos": len(dataset.videos),
        "num_texts": len(dataset.texts),
        "listed_videos": listed,
        "missing": missing,
        "missing_count": len(missing),
        "frames": config.frames,
        "img_size": img_size,
        "max_text_len": protocol.max_text_len,
        "trim_seconds": protocol.trim_seconds,
        "paragraph": protocol.paragraph,
        "rerank_k": config.rerank_k,
    }
    for name in ROWS:
        report[name] = {**rows[name], "official": to_official_keys(rows[name])}
    report["paper"] = paper
    report["delta"] = paper_delta(rows["rerank"], paper) if paper else None
    report["delta_row"] = "rerank"
    report["comparable"] = not not_comparable
    report["not_comparable"] = not_comparable
    report["seconds"] = round(seconds, 2)
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    report["device"] = runtime.describe()
    report["precision"] = "bf16" if runtime.dtype == torch.bfloat16 else "fp32"
    report["world_size"] = runtime.world
    report["vmm_version"] = __version__
    return report


def _released_files() -> set[str]:
    """The names of the released checkpoint files: the default files of the registered models."""
    from vmm.models.registry import get_model_config, list_models
    return {((get_model_config(m) or {}).get("pretrained") or {}).get("hf_file") for m in list_models()} - {None}


def _released_file(weights: dict) -> Optional[str]:
    """The name of the released checkpoint file the weights were loaded from, else None. Only the exact name
    counts: a fine-tuned "videomamba_m16_25m_ft.pth", and a folder of random weights named like the released model,
    were compared with the published row; a renamed copy of the released file cannot be told apart from those."""
    name = weights.get("file") if weights.get("source") == "checkpoint" else None
    return name if name in _released_files() else None


def _weights_change(weights: dict, corpus: str) -> str:
    """Where weights not loaded from a released file came from (``weights``: :func:`weights_source`), for
    ``not_comparable`` beside the published row of ``corpus``."""
    from retrieval.paper_numbers import checkpoint_corpus
    what = {"vmm train": f"weights trained {weights.get('steps')} steps by vmm train",
            "random": "random weights (built without a checkpoint)",
            "checkpoint": f"weights from {weights.get('file')}"}.get(
        weights.get("source"), "weights of unknown source (a folder saved by a vmm that did not record it)")
    released = sorted(n for n in _released_files() if checkpoint_corpus(n) == corpus)
    return f"{what}, not the released {' or '.join(released) or 'zero-shot checkpoint'}"


def _protocol_changes(config, dataset, protocol, img_size: int) -> list[str]:
    """How the evaluation of the released weights differs from the official protocol of the published rows: 8 frames
    and 224 px, the top 128 re-ranked, the official texts."""
    # Another k shortlists other candidates, unless both galleries are small enough that either k takes them whole.
    official_k = all(min(config.rerank_k, n) == min(OFFICIAL_RERANK_K, n)
                     for n in (len(dataset.videos), len(dataset.texts)))
    changes = {f"{config.frames} frames, not 8": config.frames != 8,
               f"{img_size} px, not 224": img_size != 224,
               f"ITM re-ranking of the top {config.rerank_k}, not {OFFICIAL_RERANK_K}": not official_k,
               # A custom DatasetProtocol may carry an official name (msrvtt with paragraphs or 64 tokens): its
               # texts are not the ones the published row was measured on.
               f"a custom {protocol.name} protocol": DATASETS.get(protocol.name) != protocol}
    return [change for change, applies in changes.items() if applies]


def _split_changes(config, dataset, protocol, listed: int, missing: list) -> list[str]:
    """How the evaluated videos and texts differ from the test split the published rows were measured on."""
    videos = OFFICIAL_TEST_VIDEOS.get(protocol.name)
    texts = OFFICIAL_TEST_TEXTS.get(protocol.name)
    changes = {
        # The val file of DiDeMo is read the same way and compared with the test split's row.
        f"{Path(config.annotations).name} is not the test split {protocol.annotation_file}":
            other_split_of(config.annotations, protocol),
        f"{len(missing)} of {listed} videos missing or unreadable": bool(missing),
        # A part of the split (a few entries of msrvtt_ret_test1k.json, to try the tool): not the same videos.
        f"{listed} of the split's {videos} videos": videos not in (None, listed),
        # The whole split with other captions (MSRVTT's 20 per video) is another query set.
        f"{len(dataset.texts)} texts for the split's {texts} (one caption per video)":
            not missing and videos in (None, listed) and texts not in (None, len(dataset.texts)),
    }
    return [change for change, applies in changes.items() if applies]


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def format_markdown(report: dict) -> str:
    """The report as a Markdown table: emb, rerank, index rows, then the paper row and the difference.

    >>> m = {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0, "MdR": 4.0, "MnR": 5.0, "count": 2}
    >>> r = {"dataset": "msrvtt", "model": "m", "checkpoint": None, "num_videos": 2, "num_texts": 2,
    ...      "missing_count": 0, "frames": 8, "rerank_k": 128, "seconds": 1.0, "device": "cpu",
    ...      "emb": {"t2v": m, "v2t": m}, "rerank": {"t2v": m, "v2t": m},
    ...      "index": {"t2v": m, "v2t": m, "type": "flat", "ann_recall@10": {"t2v": 1.0, "v2t": 1.0}},
    ...      "paper": None, "delta": None}
    >>> print(format_markdown(r).splitlines()[-1])
    | index (FAISS flat) | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 |
    """
    keys = ("R@1", "R@5", "R@10", "MdR", "MnR")
    ann = report["index"]["ann_recall@10"]
    index_name = report["index"]["type"]
    if index_name == "ivf":
        index_name += f" nlist={report['index']['nlist']} nprobe={report['index']['nprobe']}"
    lines = [
        f"### Zero-shot retrieval: {report['dataset']}",
        "",
        f"model `{report['model']}`" + (f", checkpoint `{report['checkpoint']}`" if report["checkpoint"] else ""),
        f"{report['num_videos']} videos and {report['num_texts']} texts evaluated, "
        f"{report['missing_count']} videos missing or unreadable; {report['frames']} frames, "
        f"ITM re-ranking of the top {report['rerank_k']}; index ANN recall@10 t2v {ann['t2v']:.3f}, "
        f"v2t {ann['v2t']:.3f}; {report['seconds']:.1f} s on {report['device']}",
        # The table alone showed "rerank - paper" for 3 of MSRVTT's 1,000 videos as it does for the whole split.
        *(["", f"not comparable with the paper: {'; '.join(report['not_comparable'])}"]
          if report.get("not_comparable") else []),
        "",
        "| row | " + " | ".join(f"T2V {k}" for k in keys) + " | " + " | ".join(f"V2T {k}" for k in keys) + " |",
        "|---|" + "---:|" * (2 * len(keys)),
    ]

    def row(label: str, data: dict, signed: bool = False) -> str:
        cells = [_fmt(data[d].get(k), signed) for d in ("t2v", "v2t") for k in keys]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines.append(row("emb (ITC)", report["emb"]))
    lines.append(row(f"rerank (ITM top-{report['rerank_k']})", report["rerank"]))
    lines.append(row(f"index (FAISS {index_name})", report["index"]))
    if report.get("paper"):
        lines.append(row(f"paper ({report['paper']['corpus']})", report["paper"]))
        # The difference of the rows as printed: the JSON delta, rounded to 2 decimals and then to 1, could be
        # 0.1 off it (45.5 - 58.1 printed as -12.7). "+ 0.0" turns -0.0 into 0.0.
        shown = {d: {k: round(float(_fmt(report["rerank"][d][k])) - v, 1) + 0.0 for k, v in report["paper"][d].items()}
                 for d in ("t2v", "v2t")}
        lines.append(row("rerank - paper", shown, signed=True))
    return "\n".join(lines)


def atomic_write(path: Path, write, binary: bool = False, fix: str = "choose a writable path") -> Path:
    """Write through a temporary file in the same folder, flushed, then rename (vmm.atomic): never a half-written
    report. A symlink's target is what is replaced (the rename replaced the link and left its target stale), and a
    file replaced keeps its permissions; a FIFO, a terminal or ``/dev/stdout`` is written in place (the rename
    replaced the node itself, as root even ``/dev/full``). A write that fails is a VmmError ending in ``fix``."""
    given, path = path, Path(os.path.realpath(path))
    mode, encoding = ("wb", {}) if binary else ("w", {"encoding": "utf-8"})
    if path.exists() and not path.is_file():
        try:
            with open(path, mode, **encoding) as f:
                write(f)
        except OSError as e:
            raise VmmError(f"cannot write {given} ({e.strerror or e}); {fix}") from None
        return given
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VmmError(f"cannot create {path.parent} ({e.strerror}); choose a writable folder") from None

    def write_to(tmp: str) -> None:
        with open(tmp, mode, **encoding) as f:
            write(f)
    try:
        # Flushed to the disk before the rename (the report, the scores of an hour's run): renamed unflushed, a
        # power cut after "wrote report.json" could leave it empty.
        atomic_write_file(str(path), write_to)
    except OSError as e:
        raise VmmError(f"cannot write {given} ({e.strerror or e}); {fix}") from None
    return given


def _is_eval_output(path: Path) -> bool:
    """A report or score file that an earlier evaluation wrote, which a new one may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if head.startswith(b'{\n  "dataset": ') or head.startswith(b"### Zero-shot retrieval: "):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return {"itc.npy", "i2t.npy", "t2i.npy"} <= set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def check_outputs(outputs: dict[str, Optional[str | Path]], config: EvalConfig) -> None:
    """Refuse, before any work is done, an output path that cannot be written or would destroy a file.

    ``outputs`` maps each output option (``"--json"``) to its path, None when not asked for.
    An existing file may only be replaced if an earlier evaluation wrote it: never the annotation
    file, a listed video or anything else the user did not get from us.
    """
    if all(value is None for value in outputs.values()):
        return  # nothing to check, so the annotations are read once, by the evaluation
    inputs = {os.path.realpath(config.annotations): "the annotations (--annotations) file"}
    annotations = Path(config.annotations)
    # A pipe (<(jq ...), /dev/stdin) can be read once only: read here, the evaluation found it empty. Its listed videos
    # are still safe, as existing files that no evaluation wrote (below).
    streamed = annotations.exists() and not (annotations.is_file() or annotations.is_dir())
    if not streamed:
        listed = load_retrieval_dataset(annotations, config.videos, config.dataset, allow_missing=True)
        inputs.update({os.path.realpath(v): "a video listed in the annotations"
                       for v in [*listed.videos, *listed.missing]})
    taken: dict[str, str] = {}
    for option, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        key = os.path.realpath(path)
        where = f"{option} {value}"
        if key in inputs:
            raise VmmError(f"{where} is {inputs[key]}; writing there would destroy it, choose another output path")
        if key in taken:
            raise VmmError(f"{where} is also the {taken[key]} path; give each output its own file")
        taken[key] = option
        if path.is_dir():
            example = path / {"--json": "report.json", "--markdown": "report.md"}.get(option, "scores.npz")
            raise VmmError(f"{where} is a directory; pass a file path, e.g. {example}")
        # A FIFO or /dev/stdout is written in place (atomic_write); reading it to check, as a file, would block.
        if path.is_file() and not _is_eval_output(path):
            raise VmmError(f"{where} already exists and is not an evaluation output; "
                           "delete it or choose another output path")
        folder = path.absolute().parent
        while not folder.exists():  # missing folders are created when writing
            folder = folder.parent
        if not folder.is_dir():
            raise VmmError(f"{where}: {folder} is a file, not a folder; choose a writable path")
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            raise VmmError(f"{where}: cannot write in {folder} ({e.strerror}); choose a writable folder") from None


def write_json(report: dict, path: str | Path) -> Path:
    """Write the report as indented JSON (atomically)."""
    return atomic_write(Path(path), lambda f: f.write(json.dumps(report, indent=2) + "\n"))


def write_markdown(report: dict, path: str | Path) -> Path:
    """Write :func:`format_markdown` output (atomically)."""
    return atomic_write(Path(path), lambda f: f.write(format_markdown(report) + "\n"))
