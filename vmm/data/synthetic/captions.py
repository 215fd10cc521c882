"""Captions written from a clip's spec: true by construction, varied by a style seed, and mirrored for the
clip played backwards (the same words in the same places, but for directions and the order of events).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vmm.data.synthetic.scene import Background, Event, ObjectSpec, VideoSpec

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "square": ("square", "box", "square"),
    "circle": ("circle", "disc", "ball"),
    "triangle": ("triangle", "triangle", "triangle"),
    "diamond": ("diamond", "rhombus", "diamond"),
    "cross": ("cross", "plus sign", "cross"),
}
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

MAX_CAPTION_WORDS = 26  # optional phrases are dropped above this, for a 32-token text encoder


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

    >>> from vmm.data.synthetic.scene import sample_spec
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


def signature(spec: VideoSpec) -> str:
    """What a caption can say about the clip, as a string: equal signatures mean indistinguishable captions.

    >>> from vmm.data.synthetic.scene import reverse_spec, sample_spec
    >>> spec = sample_spec(np.random.default_rng(0), size=64, fps=10, num_frames=30)
    >>> signature(spec) == signature(spec), signature(spec) == signature(reverse_spec(spec))
    (True, False)
    """
    objects = [(o.shape, o.color, o.size, o.visible) for o in spec.objects]
    static = {i: _position_words(spec.objects[i], spec.size) for i in spec.static_objects()}
    events = [(e.kind, e.obj, e.direction, e.speed, e.color_to) for e in spec.events]
    return json.dumps([spec.background.top, spec.background.bottom, objects, sorted(static.items()), events])
