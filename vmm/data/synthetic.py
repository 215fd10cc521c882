"""Procedural video-text corpus: small encoded clips of moving shapes with true captions.

It lets vmm train, index, search and evaluate on a machine with no network:
every clip is drawn from a structured description (a :class:`VideoSpec`), and
the captions are written from that same description, so they are correct by
construction. The corpus follows the official annotation format
(``{"video", "caption"}`` lists) and adds an order-sensitive test subset whose
pairs are exact time reversals of each other: a model that ignores frame order
sees the same set of frames for both members and cannot tell them apart.

Pieces, top to bottom: vocabulary, the spec dataclasses, rendering
(:func:`render_frames`), time reversal (:func:`reverse_spec`), random specs
(:func:`sample_spec`), captions (:func:`describe`), encoding
(:func:`write_video`), the corpus writer (:func:`generate_corpus`) and the CLI.

>>> import tempfile
>>> info = generate_corpus(tempfile.mkdtemp(), num_videos=6, seed=1, workers=1)
>>> info.split_sizes
{'train': 4, 'val': 1, 'test': 1}
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from vmm.errors import OneLineArgumentParser, VmmError, is_whole_number

# ----------------------------------------------------------------------------
# Vocabulary. Object and background colour names never share a word, so a
# caption's colour words always name objects.
# ----------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 225, 40),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
    "purple": (155, 60, 205),
    "cyan": (40, 215, 225),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (105, 105, 105),
    "navy": (20, 28, 85),
    "olive": (60, 70, 20),
    "brown": (90, 55, 30),
}
SHAPES = ("square", "circle", "triangle", "diamond", "cross")
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "square": ("square", "box", "square"),
    "circle": ("circle", "disc", "ball"),
    "triangle": ("triangle", "triangle", "triangle"),
    "diamond": ("diamond", "rhombus", "diamond"),
    "cross": ("cross", "plus sign", "cross"),
}
# Half-size of an object as a fraction of the frame side.
SIZE_FRACTION: dict[str, float] = {"small": 0.09, "large": 0.16}
# Speed in frame sides per second.
SPEED_FRACTION: dict[str, float] = {"slow": 0.15, "fast": 0.4}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE_DIRECTION = {"left": "right", "right": "left", "up": "down", "down": "up"}
EVENT_KINDS = ("move", "grow", "shrink", "appear", "disappear", "recolor")
INVERSE_EVENT = {"move": "move", "grow": "shrink", "shrink": "grow", "appear": "disappear",
                 "disappear": "appear", "recolor": "recolor"}

# Phrase lists of inverse events are parallel (same length, same meaning and
# word count at the same index), so a time-reversed pair drawn with the same
# style differs only in direction words and event order.
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "leftward", "towards the left"),
    "right": ("right", "to the right", "rightward", "towards the right"),
    "up": ("up", "upward", "towards the top", "upwards"),
    "down": ("down", "downward", "towards the bottom", "downwards"),
}
MOVE_VERBS = ("moves", "slides", "travels", "glides", "goes")
SPEED_PHRASES: dict[str, tuple[str, ...]] = {
    "slow": ("slowly", "gently", "at a slow pace"),
    "fast": ("quickly", "rapidly", "at high speed"),
}
EVENT_PHRASES: dict[str, tuple[str, ...]] = {
    "grow": ("grows", "gets bigger", "becomes larger", "expands", "increases in size"),
    "shrink": ("shrinks", "gets smaller", "becomes smaller", "contracts", "decreases in size"),
    "appear": ("appears", "fades in", "shows up", "becomes visible", "fades into view"),
    "disappear": ("disappears", "fades out", "goes away", "becomes invisible", "fades from view"),
    "recolor": ("turns {}", "changes to {}", "becomes {}", "changes color to {}", "switches to {}"),
}
STILL_PHRASES = ("stays still", "does not move", "sits still", "remains in place", "stays put")
STILL_PHRASES_PLURAL = ("stay still", "do not move", "sit still", "remain in place", "stay put")

MIN_EVENT_FRAMES = 4  # each event gets a slot at least this long, so every change is visible
MAX_CAPTION_WORDS = 26  # optional phrases are dropped above this, for a 32-token text encoder
MAX_MOVE_FRACTION = 0.5  # of the frame side, per move
# Frames are streamed to the encoder, so memory is about one frame whatever the
# length (drawn in float64, 24 bytes a pixel: 25 MB at 1024); the frame cap only
# bounds the time one clip takes to encode.
MAX_SIZE = 1024
MAX_FRAMES = 36000  # 10 minutes at 60 fps
SHAPE_REACH = 1.3  # furthest point of any shape from its centre, in half-sizes
CORPUS_FORMAT_VERSION = 1
OWN_JSON_FILES = ("train.json", "val.json", "test.json", "test_paragraph.json", "test_order.json", "meta.json")

# ----------------------------------------------------------------------------
# Structured description of one clip.
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Background:
    """Vertical gradient from ``top`` to ``bottom`` (equal names: a plain colour)."""

    top: str
    bottom: str

    @property
    def plain(self) -> bool:
        return self.top == self.bottom


@dataclass(frozen=True)
class ObjectSpec:
    """One shape as it is at frame 0; events change it later."""

    shape: str
    color: str
    size: str  # "small" | "large"
    x: float  # centre in pixels, from the left
    y: float  # centre in pixels, from the top
    visible: bool = True


@dataclass(frozen=True)
class Event:
    """One change of one object between frames ``start`` and ``end``.

    The object is in its old state at ``start`` and in its new state from
    ``end`` on. ``origin``/``target`` (pixels) are set for ``move``;
    ``color_from``/``color_to`` for ``recolor``.
    """

    kind: str
    obj: int
    start: int
    end: int
    direction: str | None = None
    speed: str | None = None
    origin: tuple[float, float] | None = None
    target: tuple[float, float] | None = None
    color_from: str | None = None
    color_to: str | None = None


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to draw and describe one clip; events are in time order."""

    size: int
    num_frames: int
    fps: int
    background: Background
    objects: tuple[ObjectSpec, ...]
    events: tuple[Event, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (the ``spec`` entry of ``meta.json``)."""
        return {
            "size": self.size,
            "num_frames": self.num_frames,
            "fps": self.fps,
            "background": {"top": self.background.top, "bottom": self.background.bottom},
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "x": o.x, "y": o.y, "visible": o.visible}
                for o in self.objects
            ],
            "events": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(e).items() if v is not None}
                for e in self.events
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoSpec:
        """Inverse of :meth:`to_dict`."""
        events = []
        for e in data["events"]:
            e = dict(e)
            for key in ("origin", "target"):
                if key in e:
                    e[key] = tuple(e[key])
            events.append(Event(**e))
        return cls(
            size=data["size"],
            num_frames=data["num_frames"],
            fps=data["fps"],
            background=Background(**data["background"]),
            objects=tuple(ObjectSpec(**o) for o in data["objects"]),
            events=tuple(events),
        )

    def static_objects(self) -> list[int]:
        """Indices of objects that no event touches."""
        actors = {e.obj for e in self.events}
        return [i for i in range(len(self.objects)) if i not in actors]


# ----------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------


def _lerp(a: Any, b: Any, num: int, den: int) -> Any:
    # Written so that swapping (a, num) with (b, den - num) gives the same float
    # operations in another order of a commutative sum: a clip and its time
    # reversal then render bit-identical frames.
    return (a * (den - num) + b * num) / den


def _radius(size: str, frame_side: int) -> float:
    return _quantize(SIZE_FRACTION[size] * frame_side)


def _quantize(value: float) -> float:
    # Positions on a 1/8-pixel grid add and subtract exactly in floating point.
    return round(value * 8) / 8


def object_state(spec: VideoSpec, index: int, frame: int) -> tuple[float, float, float, np.ndarray, float]:
    """``(x, y, half_size, rgb, alpha)`` of object ``index`` at ``frame``.

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> x, y, half, rgb, alpha = object_state(spec, 0, 0)
    >>> rgb.shape
    (3,)
    """
    obj = spec.objects[index]
    x, y = obj.x, obj.y
    small, large = _radius("small", spec.size), _radius("large", spec.size)
    half = large if obj.size == "large" else small
    rgb = np.array(COLORS[obj.color], dtype=np.float64)
    alpha = 1.0 if obj.visible else 0.0
    for ev in spec.events:
        if ev.obj != index:
            continue
        if frame <= ev.start:
            break
        num, den = min(frame, ev.end) - ev.start, ev.end - ev.start
        if ev.kind == "move":
            x = _lerp(ev.origin[0], ev.target[0], num, den)
            y = _lerp(ev.origin[1], ev.target[1], num, den)
        elif ev.kind == "grow":
            half = _lerp(small, large, num, den)
        elif ev.kind == "shrink":
            half = _lerp(large, small, num, den)
        elif ev.kind == "appear":
            alpha = _lerp(0.0, 1.0, num, den)
        elif ev.kind == "disappear":
            alpha = _lerp(1.0, 0.0, num, den)
        elif ev.kind == "recolor":
            rgb = _lerp(np.array(COLORS[ev.color_from], np.float64), np.array(COLORS[ev.color_to], np.float64),
                        num, den)
    return x, y, half, rgb, alpha


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Signed distance in pixels to the shape's outline (negative inside)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.hypot(dx, dy) - half
    if shape == "square":
        return np.maximum(ax, ay) - 0.9 * half
    if shape == "diamond":
        return (ax + ay - 1.25 * half) / np.sqrt(2.0)
    if shape == "triangle":  # equilateral, pointing up, centroid at the centre
        inradius = 0.65 * half
        return np.maximum(np.maximum(dy, 0.866 * dx - 0.5 * dy), -0.866 * dx - 0.5 * dy) - inradius
    if shape == "cross":
        arm = 0.35 * half
        return np.minimum(np.maximum(ax - half, ay - arm), np.maximum(ax - arm, ay - half))
    raise ValueError(f"unknown shape {shape!r}")


def render_background(background: Background, size: int) -> np.ndarray:
    """The background alone as float RGB ``(size, size, 3)``.

    >>> render_background(Background("gray", "gray"), 8)[0, 0].tolist()
    [105.0, 105.0, 105.0]
    """
    top = np.array(BACKGROUND_COLORS[background.top], np.float64)
    bottom = np.array(BACKGROUND_COLORS[background.bottom], np.float64)
    weight = ((np.arange(size) + 0.5) / size)[:, None, None]
    column = top * (1 - weight) + bottom * weight
    return np.broadcast_to(column, (size, size, 3)).copy()


def render_frames(spec: VideoSpec, frames: Sequence[int] | None = None) -> np.ndarray:
    """Draw the clip (or only the listed frame indices) as ``(T, H, W, 3)`` uint8 RGB.

    Edges are anti-aliased from the signed distance; objects are drawn in spec
    order, later ones on top (sampled specs never overlap).

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> render_frames(spec).shape
    (30, 64, 64, 3)
    """
    indices = range(spec.num_frames) if frames is None else frames
    out = np.empty((len(indices), spec.size, spec.size, 3), np.uint8)
    for slot, image in enumerate(_iter_frames(spec, indices)):
        out[slot] = image
    return out


def _iter_frames(spec: VideoSpec, indices: Sequence[int]) -> Iterator[np.ndarray]:
    # One frame at a time, so encoding a clip holds one frame, not the whole clip.
    background = render_background(spec.background, spec.size)
    centres = np.arange(spec.size, dtype=np.float64) + 0.5
    for frame in indices:
        image = background.copy()
        for index, obj in enumerate(spec.objects):
            x, y, half, rgb, alpha = object_state(spec, index, frame)
            if alpha <= 0.0:
                continue
            # Only a box around the object can be covered (the signed distance is
            # below 0.5 px inside SHAPE_REACH * half + 1); outside it the blend is
            # an exact no-op, so the crop changes speed, not pixels.
            reach = SHAPE_REACH * half + 2.0
            x0, x1 = max(0, int(x - reach)), min(spec.size, int(x + reach) + 1)
            y0, y1 = max(0, int(y - reach)), min(spec.size, int(y + reach) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            dist = _signed_distance(obj.shape, centres[None, x0:x1] - x, centres[y0:y1, None] - y, half)
            cover = (np.clip(0.5 - dist, 0.0, 1.0) * alpha)[:, :, None]
            image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1.0 - cover) + rgb * cover
        yield np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Time reversal.
# ----------------------------------------------------------------------------


def _final_objects(spec: VideoSpec) -> tuple[ObjectSpec, ...]:
    """The objects as they are after the last event."""
    objects = list(spec.objects)
    for ev in spec.events:
        obj = objects[ev.obj]
        if ev.kind == "move":
            obj = replace(obj, x=ev.target[0], y=ev.target[1])
        elif ev.kind in ("grow", "shrink"):
            obj = replace(obj, size="large" if ev.kind == "grow" else "small")
        elif ev.kind in ("appear", "disappear"):
            obj = replace(obj, visible=ev.kind == "appear")
        elif ev.kind == "recolor":
            obj = replace(obj, color=ev.color_to)
        objects[ev.obj] = obj
    return tuple(objects)


def reverse_spec(spec: VideoSpec) -> VideoSpec:
    """The same clip played backwards, described as a clip in its own right.

    Frame ``t`` of the result equals frame ``T-1-t`` of ``spec`` bit for bit.
    Events run in reverse order and turn into their inverses: left <-> right,
    up <-> down, grow <-> shrink, appear <-> disappear, red->blue <-> blue->red.

    >>> spec = sample_spec(np.random.default_rng(3), size=64, fps=10, num_frames=30)
    >>> bool((render_frames(reverse_spec(spec)) == render_frames(spec)[::-1]).all())
    True
    """
    last = spec.num_frames - 1
    events = []
    for ev in reversed(spec.events):
        events.append(Event(
            kind=INVERSE_EVENT[ev.kind], obj=ev.obj, start=last - ev.end, end=last - ev.start,
            direction=OPPOSITE_DIRECTION[ev.direction] if ev.direction else None, speed=ev.speed,
            origin=ev.target, target=ev.origin, color_from=ev.color_to, color_to=ev.color_from,
        ))
    return replace(spec, objects=_final_objects(spec), events=tuple(events))


# ----------------------------------------------------------------------------
# Random specs.
# ----------------------------------------------------------------------------


class _Resample(Exception):
    """The drawn layout does not fit; draw again."""


def _choose(rng: np.random.Generator, options: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _event_kinds(rng: np.random.Generator, count: int) -> tuple[list[str], bool, str | None]:
    """One object's event kinds in order, its visibility at frame 0, and its size at frame 0 if an event forces it."""
    kinds: list[str] = []
    visible: bool | None = None  # None: no event has fixed it yet
    size: str | None = None
    for _ in range(count):
        if visible is False:
            options = ["appear"]
        else:
            options = ["move", "recolor", "disappear"]
            options += ["appear"] if visible is None else []
            options += ["grow"] if size in (None, "small") else []
            options += ["shrink"] if size in (None, "large") else []
        kind = _choose(rng, options, [3.0 if k == "move" else 1.0 for k in options])
        visible = kind != "disappear"
        if kind in ("grow", "shrink"):
            size = "large" if kind == "grow" else "small"
        kinds.append(kind)
    first_size = next((k for k in kinds if k in ("grow", "shrink")), None)
    initial_size = None if first_size is None else ("small" if first_size == "grow" else "large")
    return kinds, not kinds or kinds[0] != "appear", initial_size


def sample_spec(rng: np.random.Generator, size: int = 64, fps: int = 10, num_frames: int = 30, *,
                max_objects: int = 3, max_actors: int = 3) -> VideoSpec:
    """Draw a random clip: 1-3 objects, 1-3 events in sequence, a plain or gradient background.

    Objects get distinct colours (a recolour never takes a colour already in the
    clip) and non-overlapping paths, so each colour in a frame names one object.

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> 1 <= len(spec.objects) <= 3 and 1 <= len(spec.events) <= 3
    True
    """
    for _ in range(1000):
        try:
            return _sample_spec_once(rng, size, fps, num_frames, max_objects, max_actors)
        except _Resample:
            continue
    raise VmmError(f"size={size}, fps={fps}, {num_frames} frames leave no room for moving objects; use a larger --size")


def _sample_spec_once(rng: np.random.Generator, size: int, fps: int, num_frames: int,
                      max_objects: int, max_actors: int) -> VideoSpec:
    background_names = list(BACKGROUND_COLORS)
    if rng.random() < 0.75:
        name = _choose(rng, background_names)
        background = Background(name, name)
    else:
        top, bottom = rng.choice(len(background_names), size=2, replace=False)
        background = Background(background_names[int(top)], background_names[int(bottom)])

    num_objects = int(_choose(rng, [1, 2, 3][:max_objects], [0.45, 0.35, 0.2][:max_objects]))
    max_events = max(1, min(3, (num_frames - 1) // MIN_EVENT_FRAMES))
    num_events = int(_choose(rng, [1, 2, 3][:max_events], [0.45, 0.35, 0.2][:max_events]))
    num_actors = min(num_objects, num_events, max_actors)
    # Every actor gets at least one event; the rest go to random actors.
    actor_of_event = list(range(num_actors)) + [int(rng.integers(num_actors)) for _ in range(num_events - num_actors)]
    actor_of_event = [actor_of_event[i] for i in rng.permutation(num_events)]

    palette = list(COLORS)
    color_order = [palette[i] for i in rng.permutation(len(palette))]
    initial_colors, spare_colors = color_order[:num_objects], color_order[num_objects:]

    bounds = [round(i * (num_frames - 1) / num_events) for i in range(num_events + 1)]
    px_per_frame = {s: SPEED_FRACTION[s] * size / fps for s in SPEED_FRACTION}
    objects: list[ObjectSpec] = []
    events: list[Event | None] = [None] * num_events
    boxes: list[tuple[float, float, float, float]] = []
    for index in range(num_objects):
        slots = [i for i, a in enumerate(actor_of_event) if a == index]
        kinds, visible, forced_size = _event_kinds(rng, len(slots))
        obj_size = forced_size or _choose(rng, ["small", "large"])
        ever_large = obj_size == "large" or "grow" in kinds
        reach = SHAPE_REACH * _radius("large" if ever_large else "small", size) + 1.0
        room = size - 2 * reach
        # Path relative to the start point, with its extent.
        cx = cy = minx = maxx = miny = maxy = 0.0
        color = initial_colors[index]
        planned = []
        for slot, kind in zip(slots, kinds):
            start, end = bounds[slot], bounds[slot + 1]
            extra: dict[str, Any] = {}
            if kind == "move":
                speed = _choose(rng, ["slow", "fast"])
                step = px_per_frame[speed]
                # Room left along each direction before the path outgrows the frame.
                free_room = {"left": room - (maxx - cx), "right": room - (cx - minx),
                             "up": room - (maxy - cy), "down": room - (cy - miny)}
                fits = []
                for name, free in free_room.items():
                    frames = int(min(end - start, MAX_MOVE_FRACTION * size / step, free / step))
                    if frames >= 2 and frames * step >= 0.08 * size:
                        fits.append((name, frames))
                if not fits:
                    raise _Resample
                direction, frames = fits[int(rng.integers(len(fits)))]
                ux, uy = DIRECTIONS[direction]
                distance = _quantize(frames * step)
                end = start + frames
                before = (cx, cy)
                cx, cy = cx + ux * distance, cy + uy * distance
                minx, maxx, miny, maxy = min(minx, cx), max(maxx, cx), min(miny, cy), max(maxy, cy)
                extra = dict(direction=direction, speed=speed, origin=before, target=(cx, cy))
            elif kind == "recolor":
                if not spare_colors:
                    raise _Resample
                new_color = spare_colors.pop(0)
                extra = dict(color_from=color, color_to=new_color)
                color = new_color
            if kind in ("appear", "disappear", "recolor"):
                # A fade or a colour change is short; centre it in its slot.
                length = int(min(end - start, max(2, round(0.5 * fps))))
                start = start + (end - start - length) // 2
                end = start + length
            planned.append((slot, kind, start, end, extra))
        # Place the path so it stays inside the frame and clear of earlier objects.
        lo_x, hi_x = reach - minx, size - reach - maxx
        lo_y, hi_y = reach - miny, size - reach - maxy
        if lo_x > hi_x or lo_y > hi_y:
            raise _Resample
        for _ in range(30):
            x0 = _quantize(rng.uniform(lo_x, hi_x))
            y0 = _quantize(rng.uniform(lo_y, hi_y))
            box = (x0 + minx - reach, x0 + maxx + reach, y0 + miny - reach, y0 + maxy + reach)
            if all(box[1] <= b[0] or b[1] <= box[0] or box[3] <= b[2] or b[3] <= box[2] for b in boxes):
                break
        else:
            raise _Resample
        boxes.append(box)
        objects.append(ObjectSpec(
            shape=_choose(rng, SHAPES), color=initial_colors[index], size=obj_size, x=x0, y=y0,
            visible=visible,
        ))
        for slot, kind, start, end, extra in planned:
            if kind == "move":
                ox, oy = extra["origin"]
                tx, ty = extra["target"]
                extra = dict(extra, origin=(x0 + ox, y0 + oy), target=(x0 + tx, y0 + ty))
            events[slot] = Event(kind=kind, obj=index, start=start, end=end, **extra)
    return VideoSpec(size=size, num_frames=num_frames, fps=fps, background=background,
                     objects=tuple(objects), events=tuple(e for e in events if e is not None))


def signature(spec: VideoSpec) -> str:
    """What a caption can say about the clip, as a string: equal signatures mean indistinguishable captions.

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> signature(spec) == signature(spec), signature(spec) == signature(reverse_spec(spec))
    (True, False)
    """
    objects = [(o.shape, o.color, o.size, o.visible) for o in spec.objects]
    static = {i: _position_words(spec.objects[i], spec.size) for i in spec.static_objects()}
    events = [(e.kind, e.obj, e.direction, e.speed, e.color_to) for e in spec.events]
    return json.dumps([spec.background.top, spec.background.bottom, objects, sorted(static.items()), events])


# ----------------------------------------------------------------------------
# Captions.
# ----------------------------------------------------------------------------


class _Style:
    """Synonym and template choices; every pick uses exactly one draw so parallel lists stay aligned."""

    def __init__(self, seed: Sequence[int]):
        self._rng = np.random.default_rng(list(seed))

    def index(self, count: int) -> int:
        return min(int(self._rng.random() * count), count - 1)

    def pick(self, options: Sequence[str]) -> str:
        return options[self.index(len(options))]

    def uniform(self) -> float:
        return float(self._rng.random())

    def chance(self, p: float) -> bool:
        return bool(self._rng.random() < p)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _position_words(obj: ObjectSpec, frame_side: int) -> str:
    column = "left" if obj.x < frame_side / 3 else "right" if obj.x > 2 * frame_side / 3 else ""
    row = "top" if obj.y < frame_side / 3 else "bottom" if obj.y > 2 * frame_side / 3 else ""
    if row and column:
        return f"in the {row} {column} corner"
    if column:
        return f"on the {column}"
    if row:
        return f"at the {row}"
    return "in the middle"


def _background_phrase(background: Background, style: _Style) -> str:
    top, bottom = background.top, background.bottom
    if background.plain:
        return style.pick((f"on {_article(top)} background", f"against {_article(top)} backdrop",
                           f"over {_article(top)} background"))
    return style.pick((f"on {_article(top)} and {bottom} gradient background",
                       f"against {_article(top)} to {bottom} gradient",
                       f"over a background fading from {top} to {bottom}"))


def _event_phrase(ev: Event, style: _Style) -> str:
    # Always five draws, whatever the kind, so blocks stay aligned between a clip and its reversal.
    draws = [style.uniform() for _ in range(5)]

    def pick(options: Sequence[str], u: float) -> str:
        return options[min(int(u * len(options)), len(options) - 1)]

    if ev.kind == "move":
        verb = pick(MOVE_VERBS, draws[0])
        where = pick(DIRECTION_PHRASES[ev.direction], draws[1])
        if draws[2] < 0.35:
            return f"{verb} {where}"
        how = pick(SPEED_PHRASES[ev.speed], draws[3])
        if how.endswith("ly") and draws[4] < 0.5:
            return f"{how} {verb} {where}"
        return f"{verb} {where} {how}"
    if ev.kind == "recolor":
        return pick(EVENT_PHRASES["recolor"], draws[0]).format(ev.color_to)
    return pick(EVENT_PHRASES[ev.kind], draws[0])


@dataclass(frozen=True)
class Description:
    """A clip's one-line caption and its paragraph (one sentence per event, static objects first)."""

    caption: str
    sentences: tuple[str, ...]


def describe(spec: VideoSpec, style_seed: Sequence[int], event_keys: Sequence[int] | None = None) -> Description:
    """Write the caption and paragraph for ``spec``.

    ``style_seed`` picks templates and synonyms. ``event_keys`` ties each event to
    its own block of choices (default: its position); a time-reversed clip passes
    the keys reversed, so its mirrored events get the mirrored words.

    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> isinstance(describe(spec, (0,)).caption, str)
    True
    """
    keys = list(range(len(spec.events))) if event_keys is None else list(event_keys)
    style = _Style(tuple(style_seed) + (0,))
    shape_words = [style.pick(SHAPE_WORDS[o.shape]) for o in spec.objects]
    size_events = {e.obj for e in spec.events if e.kind in ("grow", "shrink")}
    say_size = [style.chance(0.75 if i in size_events else 0.35) for i in range(len(spec.objects))]
    say_background = style.chance(0.5)
    background_first = style.chance(0.5)
    background_phrase = _background_phrase(spec.background, style)
    say_position = style.chance(0.6)
    still_index = style.index(len(STILL_PHRASES))
    static_first = style.chance(0.3)
    joiners = [style.pick((" and then ", ", then ", " and after that ")) for _ in range(3)]
    clause_joiner = style.pick((", then ", ", and then ", ", after which "))
    opener = style.pick(("", "", "", "", "in this clip, ", "in this video, "))

    def noun(index: int, color: str, first: bool) -> str:
        words = f"{color} {shape_words[index]}"
        if first:
            size = spec.objects[index].size if say_size[index] else ""
            return _article(f"{size} {words}".strip())
        return f"the {words}"

    phrases = [_event_phrase(ev, _Style(tuple(style_seed) + (1, key))) for ev, key in zip(spec.events, keys)]
    colors = [o.color for o in spec.objects]
    mentioned: set[int] = set()
    sentences: list[str] = []
    clauses: list[str] = []
    # Static objects, in object order, are the scene; events follow in time.
    statics = spec.static_objects()
    static_nouns = [noun(i, colors[i], True) for i in statics]
    mentioned.update(statics)
    for i, text in zip(statics, static_nouns):
        place = f" {_position_words(spec.objects[i], spec.size)}" if say_position else ""
        sentences.append(f"{text} {STILL_PHRASES[still_index]}{place}")
    run_obj, run_parts = -1, []
    for ev, phrase in zip(spec.events, phrases):
        subject = noun(ev.obj, colors[ev.obj], ev.obj not in mentioned)
        mentioned.add(ev.obj)
        sentences.append(f"{subject} {phrase}")
        if ev.obj == run_obj:
            run_parts.append(phrase)
        else:
            if run_parts:
                clauses.append(_join_run(run_parts, joiners))
            run_obj, run_parts = ev.obj, [subject, phrase]
        if ev.kind == "recolor":
            colors[ev.obj] = ev.color_to
    clauses.append(_join_run(run_parts, joiners))
    events_text = clause_joiner.join(clauses)

    def assemble(with_opener: bool, with_background: bool, with_position: bool) -> str:
        text = events_text
        if statics:
            verb = STILL_PHRASES[still_index] if len(statics) == 1 else STILL_PHRASES_PLURAL[still_index]
            if with_position and len(statics) == 1:
                verb += f" {_position_words(spec.objects[statics[0]], spec.size)}"
            scene = f"{' and '.join(static_nouns)} {verb}"
            text = f"{scene} while {text}" if static_first else f"{text}, while {scene}"
        if with_background:
            text = f"{background_phrase}, {text}" if background_first else f"{text} {background_phrase}"
        return (opener if with_opener else "") + text

    # Long captions lose their optional parts first, so they fit a 32-token text encoder.
    for flags in ((True, True, True), (False, True, True), (False, False, True), (False, False, False)):
        caption = assemble(flags[0] and bool(opener), flags[1] and say_background, flags[2] and say_position)
        if len(caption.split()) <= MAX_CAPTION_WORDS:
            break
    if say_background:
        if background_first:
            sentences[0] = f"{background_phrase}, {sentences[0]}"
        else:
            sentences[0] = f"{sentences[0]} {background_phrase}"
    return Description(caption=caption, sentences=tuple(sentences))


def _join_run(parts: list[str], joiners: list[str]) -> str:
    """``subject p1 and then p2``: one object's consecutive events."""
    subject, phrases = parts[0], parts[1:]
    text = f"{subject} {phrases[0]}"
    for number, phrase in enumerate(phrases[1:]):
        text += joiners[number] + phrase
    return text


# ----------------------------------------------------------------------------
# Encoding.
# ----------------------------------------------------------------------------


def pick_codec(requested: str = "auto") -> str:
    """``libx264`` when the installed PyAV has it, else ``mpeg4``; or check the requested one.

    >>> pick_codec() in ("libx264", "mpeg4")
    True
    """
    import av

    if requested == "auto":
        return "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if requested not in ("libx264", "mpeg4"):
        raise VmmError(f"--codec {requested}: unknown codec; use auto, libx264 or mpeg4")
    if requested not in av.codecs_available:
        raise VmmError(f"--codec {requested}: this PyAV build has no {requested} encoder; use --codec auto")
    return requested


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: int | Fraction | float,
                codec: str = "libx264") -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (or any iterable of ``(H, W, 3)`` frames) into an mp4 at ``path``.

    ``fps`` may be a fraction (``Fraction(30000, 1001)``, NTSC's 29.97). Encoding runs on one thread so the bytes
    are identical from run to run.

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "clip.mp4")
    >>> write_video(np.zeros((8, 32, 32, 3), np.uint8), out, fps=8)
    >>> os.path.getsize(out) > 0
    True
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise VmmError(f"write_video: no frames to encode into {path}")
    # Checked before the file is opened: PyAV's own errors for these ("Generic error in an external library" for an
    # odd width) name neither the frame nor the fix.
    _check_frame(first, 0)
    rate = None
    if is_whole_number(fps):
        rate = Fraction(int(fps))
    elif isinstance(fps, Fraction) or (isinstance(fps, (float, np.floating)) and math.isfinite(fps)):
        rate = Fraction(fps) if isinstance(fps, Fraction) else Fraction(float(fps))
    if rate is None or not Fraction(1, 100) <= rate <= 1000:
        raise VmmError(f"write_video: fps must be a number of frames per second from 0.01 to 1000, got {fps!r}")
    rate = rate.limit_denominator(1001)  # a float's binary expansion as the short fraction it stands for
    try:
        _encode(itertools.chain([first], frames), first.shape, path, rate, codec)
    except BaseException:
        # Half an mp4 has no index and reads as a corrupt video: leave no file rather than that one.
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


def _check_frame(frame, number: int, shape=None) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = (f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray)
               else type(frame).__name__)
        raise VmmError(f"write_video: frame {number} must be a uint8 RGB array of shape (H, W, 3), got {got}")
    if shape is None and (frame.shape[0] % 2 or frame.shape[1] % 2 or min(frame.shape[:2]) < 2):
        raise VmmError(f"write_video: frames of {frame.shape[1]}x{frame.shape[0]} pixels cannot be encoded as "
                       "yuv420p; use an even width and height")
    if shape is not None and frame.shape != shape:
        raise VmmError(f"write_video: frame {number} has shape {frame.shape}, but frame 0 has {shape}; give every "
                       "frame the same size")


def _encode(frames, shape, path, fps: Fraction, codec: str) -> None:
    import av

    with av.open(os.fspath(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = shape[0], shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, round(fps))
        # Bytes must not depend on the run: one encoder thread, explicit
        # timestamps, and x264's plain C code paths. With x264's SIMD code on an
        # AVX-512 machine, about 1 clip in 30 of this size came out different
        # depending on what the process had encoded before (PyAV 18.1; the same
        # flags without AVX-512 were stable). The C paths cost ~2x encode time.
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "asm=0"}
        else:
            stream.bit_rate = int(shape[0] * shape[1] * fps * 3)
        for number, frame in enumerate(frames):
            _check_frame(frame, number, shape)
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = number
            picture.time_base = 1 / fps
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def _render_and_write(job: tuple[dict[str, Any], str, str]) -> None:
    spec_dict, path, codec = job
    spec = VideoSpec.from_dict(spec_dict)
    partial = Path(path).with_name("." + Path(path).name + ".partial")
    write_video(_iter_frames(spec, range(spec.num_frames)), partial, spec.fps, codec)
    os.replace(partial, path)


# ----------------------------------------------------------------------------
# The corpus.
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of :func:`generate_corpus`; checked by :meth:`validate`."""

    num_videos: int = 300
    seed: int = 0
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    size: int = 64
    fps: int = 10
    seconds: float = 3.0
    order_fraction: float = 0.5
    codec: str = "auto"

    @property
    def num_frames(self) -> int:
        return int(round(self.fps * self.seconds))

    def split_sizes(self) -> dict[str, int]:
        """Largest-remainder rounding; every split with a share > 0 gets a clip when there are enough."""
        wanted = [self.num_videos * f for f in self.splits]
        counts = [int(w) for w in wanted]
        # Ties go to test, then val, so small corpora still have held-out clips.
        by_remainder = sorted(range(3), key=lambda i: (counts[i] - wanted[i], -i))
        for i in by_remainder[: self.num_videos - sum(counts)]:
            counts[i] += 1
        for i in (2, 1, 0):
            largest = max(range(3), key=lambda j: counts[j])
            if self.splits[i] > 0 and counts[i] == 0 and counts[largest] > 1:
                counts[i], counts[largest] = 1, counts[largest] - 1
        return dict(zip(("train", "val", "test"), counts))

    def validate(self) -> None:
        if not isinstance(self.num_videos, int) or self.num_videos < 1:
            raise VmmError(f"--num-videos {self.num_videos}: must be a whole number of at least 1")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise VmmError(f"--seed {self.seed}: must be a whole number >= 0")
        # "not 0 <= f" also refuses NaN, which every comparison fails.
        if len(self.splits) != 3 or not all(0 <= f <= 1 for f in self.splits) or abs(sum(self.splits) - 1) > 1e-6:
            raise VmmError(f"--splits {' '.join(map(str, self.splits))}: give three fractions >= 0 "
                           "(train val test) that sum to 1")
        if not isinstance(self.size, int) or not 32 <= self.size <= MAX_SIZE or self.size % 2:
            raise VmmError(f"--size {self.size}: must be an even number of pixels from 32 to {MAX_SIZE}")
        if not isinstance(self.fps, int) or not 1 <= self.fps <= 60:
            raise VmmError(f"--fps {self.fps}: must be a whole number from 1 to 60")
        if not math.isfinite(self.seconds) or not 8 <= self.num_frames <= MAX_FRAMES:
            frames = (f"gives {self.num_frames} frames" if abs(self.seconds) < 1e9 else "is far too long"
                      ) if math.isfinite(self.seconds) else "is not a finite length"
            raise VmmError(f"--seconds {self.seconds} at --fps {self.fps} {frames}; "
                           f"use 8 to {MAX_FRAMES} frames (fps x seconds)")
        if not 0 <= self.order_fraction <= 1:
            raise VmmError(f"--order-fraction {self.order_fraction}: must be between 0 and 1")


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`generate_corpus` wrote. ``"video"`` paths in the JSON files are relative to ``out_dir``."""

    out_dir: Path
    num_videos: int
    split_sizes: dict[str, int]
    num_order_pairs: int
    codec: str
    size: int
    fps: int
    num_frames: int
    annotation_files: dict[str, Path] = field(default_factory=dict)
    seconds_taken: float = 0.0


@dataclass
class _Clip:
    split: str
    spec: VideoSpec
    description: Description
    pair_id: int | None = None
    pair_kind: str | None = None
    reversed_member: bool = False


# Kinds of order-sensitive pairs, in the order pairs are made; direction and
# multi-event sequences come twice as often as the rest.
PAIR_KIND_CYCLE = ("direction", "sequence", "color_order", "direction", "size", "visibility", "sequence")


def _pair_kind(spec: VideoSpec) -> str:
    if len(spec.events) > 1:
        return "sequence"
    return {"move": "direction", "recolor": "color_order", "grow": "size", "shrink": "size",
            "appear": "visibility", "disappear": "visibility"}[spec.events[0].kind]


def _plan(config: CorpusConfig) -> list[_Clip]:
    """All clips in slot order: train, val, regular test, then test pairs. Pure function of the config."""
    sizes = config.split_sizes()
    num_pairs = int(sizes["test"] * config.order_fraction) // 2
    args = dict(size=config.size, fps=config.fps, num_frames=config.num_frames)
    clips: list[_Clip] = []
    slot = 0
    for split in ("train", "val", "test"):
        regular = sizes[split] - (2 * num_pairs if split == "test" else 0)
        # Val and test captions must be unique within their split, or retrieval has two right answers.
        seen: set[str] = set()
        for _ in range(regular):
            rng = np.random.default_rng([config.seed, slot])
            spec = sample_spec(rng, **args)
            for _attempt in range(50):
                if split == "train" or signature(spec) not in seen:
                    break
                spec = sample_spec(rng, **args)
            seen.add(signature(spec))
            clips.append(_Clip(split, spec, describe(spec, (config.seed, slot))))
            slot += 1
        if split != "test":
            continue
        for pair in range(num_pairs):
            rng = np.random.default_rng([config.seed, slot])
            wanted = PAIR_KIND_CYCLE[pair % len(PAIR_KIND_CYCLE)]
            # Short clips cannot hold every kind: after 200 draws any usable pair will do.
            for attempt in range(2000):
                spec = sample_spec(rng, **args, max_actors=1)
                back = reverse_spec(spec)
                if signature(spec) == signature(back) or {signature(spec), signature(back)} & seen:
                    continue
                if _pair_kind(spec) == wanted or attempt >= 200:
                    break
            else:
                raise VmmError(f"could not make {num_pairs} distinct order pairs at --size {config.size}; "
                               "lower --order-fraction or --num-videos")
            seen.update((signature(spec), signature(back)))
            keys = list(range(len(spec.events)))
            style = (config.seed, slot)
            kind = _pair_kind(spec)
            clips.append(_Clip("test", spec, describe(spec, style, keys), pair, kind))
            clips.append(_Clip("test", back, describe(back, style, keys[::-1]), pair, kind, True))
            slot += 2
    return clips


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder holding anything this generator did not write, or a corpus without ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise VmmError(f"{out_dir} is a file; give a folder path for the corpus")
    if not out_dir.is_dir():
        return
    foreign = [p for p in out_dir.iterdir() if _unpartial(p.name) not in OWN_JSON_FILES and p.name != "videos"]
    videos = out_dir / "videos"
    if videos.is_dir():
        foreign += [p for p in videos.iterdir() if not _is_own_video_name(p.name)]
    elif videos.exists():
        foreign.append(videos)
    if foreign:
        raise VmmError(f"{out_dir} holds files this generator did not write (e.g. {foreign[0].name}); "
                       "choose an empty or new folder")
    # Without meta.json (written last) the folder holds what a failed run left: nothing worth keeping.
    if (out_dir / "meta.json").exists() and not overwrite:
        raise VmmError(f"{out_dir} already holds a synthetic corpus; pass --overwrite (overwrite=True) "
                       "to replace it or choose a new folder")


def _clear(out_dir: Path) -> None:
    """Delete the files this generator writes (by name; nothing else)."""
    # meta.json first: once it is gone, what is left no longer passes for a corpus.
    for name in ("meta.json", *OWN_JSON_FILES):
        (out_dir / name).unlink(missing_ok=True)
        (out_dir / f".{name}.partial").unlink(missing_ok=True)
    videos = out_dir / "videos"
    if videos.is_dir():
        for p in videos.iterdir():
            if _is_own_video_name(p.name):
                p.unlink()


def _unpartial(name: str) -> str:
    """``.x.partial`` (a file being written) -> ``x``."""
    return name[1:-len(".partial")] if name.startswith(".") and name.endswith(".partial") else name


def _is_own_video_name(name: str) -> bool:
    stem = _unpartial(name)
    return stem.startswith("synth_") and stem.endswith(".mp4") and stem[6:-4].isdigit()


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name("." + path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _is_kind(value, kind: str) -> bool:
    whole = is_whole_number(value)
    return {"a whole number": whole, "a number": whole or isinstance(value, (float, np.floating)),
            "a whole number or None": value is None or whole, "a str": isinstance(value, str),
            "True or False": isinstance(value, (bool, np.bool_))}[kind]


def _annotation_lists(clips: Sequence[_Clip], names: Sequence[str], order: Sequence[int]):
    """The entries of the corpus's JSON files, clips taken in ``order`` (file-number order): per split the
    ``{"video", "caption"}`` lists, the test paragraphs, the order-sensitive test pairs (sorted by pair) and the
    meta.json records."""
    annotations: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    paragraphs, order_subset, meta_videos = [], [], []
    for i in order:
        clip, name = clips[i], names[i]
        entry: dict[str, Any] = {"video": name, "caption": clip.description.caption}
        paragraph: dict[str, Any] = {"video": name, "caption": list(clip.description.sentences)}
        if clip.pair_id is not None:
            entry.update(order_sensitive=True, pair_id=clip.pair_id)
            paragraph.update(order_sensitive=True, pair_id=clip.pair_id)
            order_subset.append(entry)
        annotations[clip.split].append(entry)
        if clip.split == "test":
            paragraphs.append(paragraph)
        meta_entry = {"video": name, "split": clip.split, "caption": clip.description.caption,
                      "paragraph": list(clip.description.sentences)}
        if clip.pair_id is not None:
            meta_entry.update(order_sensitive=True, pair_id=clip.pair_id, pair_kind=clip.pair_kind,
                              pair_member="reversed" if clip.reversed_member else "forward")
        meta_entry["spec"] = clip.spec.to_dict()
        meta_videos.append(meta_entry)
    order_subset.sort(key=lambda e: (e["pair_id"], e["video"]))
    return annotations, paragraphs, order_subset, meta_videos


def generate_corpus(out_dir: str | os.PathLike, num_videos: int = 300, seed: int = 0,
                    splits: Sequence[float] = (0.8, 0.1, 0.1), size: int = 64, fps: int = 10,
                    seconds: float = 3.0, workers: int | None = None, order_fraction: float = 0.5,
                    codec: str = "auto", overwrite: bool = False) -> CorpusInfo:
    """Write a procedural video-text corpus to ``out_dir``.

    Files: ``videos/synth_NNNNN.mp4``; ``train.json``, ``val.json``, ``test.json``
    (lists of ``{"video", "caption"}``, video paths relative to ``out_dir``;
    order-sensitive test entries add ``"order_sensitive": true`` and ``"pair_id"``);
    ``test_order.json`` (only those pairs); ``test_paragraph.json`` (DiDeMo style,
    ``"caption"`` is a list of sentences); ``meta.json`` (each clip's spec, split,
    caption and paragraph). ``order_fraction`` of the test split is made of
    time-reversed pairs. The output depends only on the arguments other than
    ``workers``: the same seed gives byte-identical files.

    >>> import tempfile
    >>> info = generate_corpus(tempfile.mkdtemp(), num_videos=10, seed=0, workers=1)
    >>> info.num_videos, info.num_frames
    (10, 30)
    """
    began = time.perf_counter()
    # Types first: a str or None from a Python caller failed inside the range checks with a bare TypeError, and
    # overwrite="no" counted as yes.
    for name, value, kind in (("num_videos", num_videos, "a whole number"), ("seed", seed, "a whole number"),
                              ("size", size, "a whole number"), ("fps", fps, "a whole number"),
                              ("seconds", seconds, "a number"), ("order_fraction", order_fraction, "a number"),
                              ("workers", workers, "a whole number or None"), ("codec", codec, "a str"),
                              ("overwrite", overwrite, "True or False")):
        if not _is_kind(value, kind):
            raise VmmError(f"--{name.replace('_', '-')} ({name}={value!r}): must be {kind}")
    try:
        parts = None if isinstance(splits, (str, bytes)) else tuple(splits)
    except TypeError:
        parts = None
    if parts is None or not all(_is_kind(f, "a number") for f in parts):
        raise VmmError(f"--splits (splits={splits!r}): must be three numbers (train val test) that sum to 1")
    # NumPy numbers are fine, as plain ones from here on (the checks below and the JSON written need those).
    num_videos, seed, size, fps = int(num_videos), int(seed), int(size), int(fps)
    seconds, order_fraction = float(seconds), float(order_fraction)
    workers = None if workers is None else int(workers)
    config = CorpusConfig(num_videos=num_videos, seed=seed, splits=tuple(float(f) for f in parts), size=size,
                          fps=fps, seconds=seconds, order_fraction=order_fraction, codec=codec)
    config.validate()
    codec_name = pick_codec(codec)
    if workers is not None and workers < 0:
        raise VmmError(f"--workers {workers}: must be 0 or more (0 and 1 encode in this process)")
    out = Path(out_dir)
    try:
        _check_out_dir(out, overwrite)
    except OSError as err:
        raise VmmError(f"cannot read {out} ({err.strerror or err}); choose a readable folder for the corpus") from None
    # Everything that can be refused is refused above or here, before anything is created or deleted.
    clips = _plan(config)
    # File numbers are shuffled so a file name does not reveal its split.
    file_number = np.random.default_rng([seed, 1 << 30]).permutation(len(clips))
    width = max(5, len(str(len(clips) - 1)))
    names = [f"videos/synth_{int(n):0{width}d}.mp4" for n in file_number]

    annotations, paragraphs, order_subset, meta_videos = _annotation_lists(
        clips, names, np.argsort(file_number, kind="stable"))
    meta_config = {"num_videos": num_videos, "seed": seed, "splits": list(config.splits), "size": size,
                   "fps": fps, "seconds": seconds, "num_frames": config.num_frames,
                   "order_fraction": order_fraction, "codec": codec_name}

    workers = min(os.cpu_count() or 1, 4) if workers is None else max(1, int(workers))
    created = not out.exists()
    try:
        if out.is_dir():
            _clear(out)
        (out / "videos").mkdir(parents=True, exist_ok=True)
        jobs = [(clip.spec.to_dict(), str(out / name), codec_name) for clip, name in zip(clips, names)]
        if workers == 1 or len(jobs) < 8:
            for job in jobs:
                _render_and_write(job)
        else:
            # Forked workers only render with numpy and encode with PyAV, never touching torch.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            # A Pool, not a ProcessPoolExecutor: leaving the block on Ctrl-C terminates the workers at once
            # (the executor would first finish every queued clip), and they ignore the Ctrl-C themselves, so
            # it is reported once, by this process.
            with multiprocessing.get_context(method).Pool(workers, initializer=signal.signal,
                                                          initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
                pool.map(_render_and_write, jobs, chunksize=max(1, len(jobs) // (4 * workers)))

        files = {}
        for split, entries in annotations.items():
            files[split] = out / f"{split}.json"
            _write_json(files[split], entries)
        files["test_paragraph"] = out / "test_paragraph.json"
        _write_json(files["test_paragraph"], paragraphs)
        files["test_order"] = out / "test_order.json"
        _write_json(files["test_order"], order_subset)
        files["meta"] = out / "meta.json"
        # meta.json is written last: its presence marks a complete corpus.
        _write_json(files["meta"], {"format": "vmm.synthetic", "version": CORPUS_FORMAT_VERSION,
                                    "config": meta_config, "videos": meta_videos})
    except BaseException as err:
        # A failed run leaves nothing a loader or the next run could take for a corpus.
        with contextlib.suppress(OSError):
            _clear(out)
            (out / "videos").rmdir()
            if created:
                out.rmdir()
        if isinstance(err, OSError):
            raise VmmError(f"cannot write the corpus to {out} ({err.strerror or err}); "
                           "choose a writable folder with free space") from None
        raise
    return CorpusInfo(out_dir=out, num_videos=len(clips), split_sizes=config.split_sizes(),
                      num_order_pairs=len(order_subset) // 2, codec=codec_name, size=size, fps=fps,
                      num_frames=config.num_frames, annotation_files=files,
                      seconds_taken=time.perf_counter() - began)


def read_specs(out_dir: str | os.PathLike) -> dict[str, VideoSpec]:
    """Map each ``"video"`` path of a corpus to its :class:`VideoSpec`, read from ``meta.json``.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> _ = generate_corpus(root, num_videos=4, seed=0, workers=1)
    >>> len(read_specs(root))
    4
    """
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        raise VmmError(f"{path} not found; generate the corpus first with python -m vmm.data.synthetic {out_dir}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return {v["video"]: VideoSpec.from_dict(v["spec"]) for v in meta["videos"]}
    except (ValueError, KeyError, TypeError) as err:
        raise VmmError(f"{path} is not a vmm synthetic meta file ({err}); regenerate the corpus") from None


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vmm.data.synthetic OUT_DIR --num-videos N --seed S``; returns the exit status.

    >>> import tempfile
    >>> main([tempfile.mkdtemp(), "--num-videos", "4", "--seed", "0", "--workers", "1"])  # doctest: +ELLIPSIS
    wrote 4 videos ...
    0
    """
    parser = OneLineArgumentParser(prog="python -m vmm.data.synthetic",
                                   description="Write a procedural video-text corpus (videos + captions).")
    parser.add_argument("out_dir", help="folder to write (new or empty; see --overwrite)")
    parser.add_argument("--num-videos", type=int, default=300, help="total clips over all splits (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same corpus (default 0)")
    parser.add_argument("--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"),
                        help="split fractions summing to 1 (default 0.8 0.1 0.1)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels, even (default 64)")
    parser.add_argument("--fps", type=int, default=10, help="frames per second (default 10)")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length (default 3.0)")
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: up to 4 cores)")
    parser.add_argument("--order-fraction", type=float, default=0.5,
                        help="share of the test split made of time-reversed pairs (default 0.5)")
    parser.add_argument("--codec", default="auto", choices=("auto", "libx264", "mpeg4"))
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus this command wrote earlier")
    args = parser.parse_args(argv)
    try:
        info = generate_corpus(args.out_dir, num_videos=args.num_videos, seed=args.seed, splits=args.splits,
                               size=args.size, fps=args.fps, seconds=args.seconds, workers=args.workers,
                               order_fraction=args.order_fraction, codec=args.codec, overwrite=args.overwrite)
    except VmmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # generate_corpus has removed what it wrote
        print("interrupted; nothing was kept", file=sys.stderr)
        return 130
    sizes = ", ".join(f"{k} {v}" for k, v in info.split_sizes.items())
    print(f"wrote {info.num_videos} videos ({sizes}; {info.num_order_pairs} order pairs) "
          f"to {info.out_dir} in {info.seconds_taken:.1f} s [{info.codec}, {info.size}x{info.size}, "
          f"{info.num_frames} frames at {info.fps} fps]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
