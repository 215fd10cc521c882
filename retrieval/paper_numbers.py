"""Published zero-shot retrieval numbers of VideoMamba-M (8 frames, 224 px).

Source: the official repo's ``videomamba/video_mm/MODEL_ZOO.md`` ("Zero-shot
Evaluation"), which lists R@1/5/10 for the three released multimodal
checkpoints ``videomamba_m16_{5M,17M,25M}_f8_res224.pth``. The zoo does not say which row
of the official evaluation they are; they are taken to be the ITM re-ranked (``test/``) row,
not the ITC-only one, by inference (the spec marks it [inferred]): for UMT, which shares the
evaluation code, the author's ``test/`` row in UMT issue #49 equals UMT's MODEL_ZOO.
"""
from __future__ import annotations

import re

# dataset -> corpus -> direction -> (R@1, R@5, R@10)
PAPER_ZERO_SHOT: dict[str, dict[str, dict[str, tuple[float, float, float]]]] = {
    "msrvtt": {
        "5M": {"t2v": (32.0, 53.1, 63.6), "v2t": (28.2, 47.6, 56.5)},
        "17M": {"t2v": (34.7, 58.9, 68.0), "v2t": (29.5, 49.9, 60.1)},
        "25M": {"t2v": (35.6, 58.1, 69.5), "v2t": (29.1, 51.6, 62.2)},
    },
    "didemo": {
        "5M": {"t2v": (36.6, 61.7, 70.3), "v2t": (38.3, 64.7, 73.3)},
        "17M": {"t2v": (42.0, 67.3, 76.8), "v2t": (42.3, 68.2, 76.9)},
        "25M": {"t2v": (43.1, 68.1, 77.7), "v2t": (43.8, 69.7, 77.8)},
    },
    "anet": {
        "5M": {"t2v": (35.9, 61.1, 72.3), "v2t": (32.8, 58.8, 69.9)},
        "17M": {"t2v": (40.1, 65.7, 76.1), "v2t": (34.2, 61.8, 73.2)},
        "25M": {"t2v": (41.0, 67.5, 77.8), "v2t": (37.1, 65.0, 75.1)},
    },
    "lsmdc": {
        "5M": {"t2v": (18.0, 36.1, 43.4), "v2t": (15.9, 31.0, 39.2)},
        "17M": {"t2v": (18.4, 35.3, 43.0), "v2t": (16.5, 32.1, 40.0)},
        "25M": {"t2v": (20.4, 37.1, 45.7), "v2t": (17.9, 34.6, 42.1)},
    },
    "msvd": {
        "5M": {"t2v": (38.0, 68.6, 79.0), "v2t": (57.5, 79.9, 85.4)},
        "17M": {"t2v": (40.3, 70.0, 79.7), "v2t": (61.8, 81.0, 87.0)},
        "25M": {"t2v": (42.0, 71.6, 81.2), "v2t": (62.7, 82.8, 87.6)},
    },
}

# Videos of the test splits the rows were measured on, where the spec gives the count (MSRVTT 1k-A,
# LSMDC's 1,000 clips; DiDeMo's JSON may hold fewer than its 1,004 and is not checked).
OFFICIAL_TEST_VIDEOS = {"msrvtt": 1000, "lsmdc": 1000}
# Their texts: one caption per video (MSRVTT 1k-A is a 1,000 x 1,000 evaluation), so a file giving MSRVTT's 20
# captions per video measures another task on the same videos.
OFFICIAL_TEST_TEXTS = {"msrvtt": 1000, "lsmdc": 1000}

_DATASET_ALIASES = {"activitynet": "anet", "anet_captions": "anet", "msr-vtt": "msrvtt", "msr_vtt": "msrvtt"}
_CORPUS = re.compile(r"(?:^|[_\-])(5|17|25)m(?:$|[_\-.])")
_FRAMES = re.compile(r"(?:^|[_\-])f(\d+)(?:$|[_\-.])")
_RES = re.compile(r"(?:^|[_\-])res(\d+)(?:$|[_\-.])")


def checkpoint_corpus(checkpoint_name: str) -> str | None:
    """Pretraining corpus ("5M", "17M", "25M") of a VideoMamba-M multimodal checkpoint name.

    Accepts file names or paths (``videomamba_m16_25M_f8_res224.pth``) and model
    names (``videomamba_m16_25m``); ``None`` for anything else, including other
    frame counts or resolutions than the published 8 frames / 224 px.

    >>> checkpoint_corpus("/ckpt/videomamba_m16_17M_f8_res224.pth")
    '17M'
    >>> checkpoint_corpus("videomamba_s16_25m") is None
    True
    """
    name = checkpoint_name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if "m16" not in name and "middle" not in name:
        return None
    frames, res = _FRAMES.search(name), _RES.search(name)
    if (frames and frames.group(1) != "8") or (res and res.group(1) != "224"):
        return None
    corpus = _CORPUS.search(name)
    return f"{corpus.group(1)}M" if corpus else None


def paper_row(dataset: str, checkpoint_name: str) -> dict | None:
    """Published zero-shot R@1/5/10 for a dataset and checkpoint, or ``None`` if not published.

    >>> paper_row("msrvtt", "videomamba_m16_25M_f8_res224")["t2v"]
    {'R@1': 35.6, 'R@5': 58.1, 'R@10': 69.5}
    >>> paper_row("ActivityNet", "videomamba_m16_5m")["v2t"]["R@1"]
    32.8
    """
    key = dataset.lower()
    key = _DATASET_ALIASES.get(key, key)
    corpus = checkpoint_corpus(checkpoint_name)
    if key not in PAPER_ZERO_SHOT or corpus is None:
        return None
    row = PAPER_ZERO_SHOT[key][corpus]
    return {
        "dataset": key,
        "corpus": corpus,
        **{direction: dict(zip(("R@1", "R@5", "R@10"), row[direction])) for direction in ("t2v", "v2t")},
        "source": "OpenGVLab/VideoMamba videomamba/video_mm/MODEL_ZOO.md, zero-shot, ITM re-ranked",
    }


def paper_delta(metrics: dict[str, dict[str, float]], row: dict) -> dict[str, dict[str, float]]:
    """Measured minus published recall, per direction, from :func:`retrieval_metrics` output.

    >>> row = paper_row("msrvtt", "videomamba_m16_25m")
    >>> measured = {"t2v": {"R@1": 36.0, "R@5": 58.1, "R@10": 69.0}, "v2t": {"R@1": 29.1, "R@5": 51.6, "R@10": 62.2}}
    >>> paper_delta(measured, row)["t2v"]
    {'R@1': 0.4, 'R@5': 0.0, 'R@10': -0.5}
    """
    return {
        direction: {k: round(metrics[direction][k] - v, 2) for k, v in row[direction].items()}
        for direction in ("t2v", "v2t")
    }
