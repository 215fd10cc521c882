"""The training recipe: typed dataclasses read from YAML, with dotted ``key=value`` overrides.

A recipe is a YAML mapping with the sections below (every key optional). The defaults of the optimizer, schedule,
MLM and masking settings are the official stage-1 ones; the model (``vmm_nano``), ``data.batch_size`` (8),
``loss.uta`` (0: no CLIP teacher to download) and ``train.weights_dtype`` (float32) are not, so the released
recipes set them. ``base: other.yaml`` (relative to the recipe) is merged underneath, so stage-2
recipes only list what changes. Overrides on the command line use dotted paths and Python literals
(``optim.lr=8e-5``, ``data.train=[{'anno': 'a.json', 'root': 'videos'}]``); a value that is not a literal is
taken as a string (``train.output_dir=runs/x``). Unknown keys and wrongly typed values are refused with a
one-line :class:`~vmm.errors.VmmError` before anything else runs.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from vmm.errors import VmmError


@dataclass
class ModelSection:
    """Which model to train and where its starting weights come from."""

    name: str = "vmm_nano"  # registered model name (configs/models/*.json or an entrypoint)
    vision: dict = field(default_factory=dict)  # VideoMambaConfig overrides
    text: dict = field(default_factory=dict)  # TextConfig overrides (mlm_head is set from loss.mlm)
    overrides: dict = field(default_factory=dict)  # other MultimodalConfig overrides (embed_dim, ...)
    init: Optional[str] = None  # whole-model weights: save_pretrained folder or checkpoint (stage 2: stage 1)
    vision_init: Optional[str] = None  # vision-encoder weights only (official K400 mask-pretrained .pth)
    grad_checkpointing: bool = False


@dataclass
class SourceConfig:
    """One training corpus: an annotation list (``anno`` + ``root``) or webdataset-style tar ``shards``."""

    anno: Optional[str] = None  # JSON list of {"video"|"image": path, "caption": str | [str]}
    root: str = ""  # folder the media paths are relative to
    shards: Union[str, list, None] = None  # tar file(s) or glob(s) holding key.mp4/.jpg + key.txt/.json
    weight: float = 1.0  # samples per epoch = weight x corpus size (repeats when > 1)
    name: Optional[str] = None  # label in logs; default: file name
    # Annotation key whose equal values put items in the same batch (e.g. "pair_id" of time-reversed twins):
    # they become each other's in-batch and hard negatives. Items without the key are shuffled as usual.
    group_key: Optional[str] = None


@dataclass
class DataSection:
    train: list = field(default_factory=list)  # list of SourceConfig
    batch_size: int = 8  # per process and micro-batch
    num_workers: int = 2
    prefetch_factor: int = 2
    max_text_len: Optional[int] = None  # None: the model's (32 for the official models)
    caption_sampling: str = "random"  # "random": one caption of a list per epoch; "all": each is a sample
    max_retries: int = 20  # corrupt samples in a row before giving up
    # Fraction of a corpus's listed media files that may be missing (replaced by other samples like corrupt
    # files); above it the run is refused before it starts. 0: every listed file must exist.
    max_missing: float = 0.0
    # Probability of the official horizontal flip. 0 for data whose captions name left and right: a flipped
    # "moves left" clip shows a right move, so training would teach that the direction does not matter.
    hflip: float = 0.5


@dataclass
class LossSection:
    vtc: float = 1.0
    vtm: float = 1.0
    mlm: float = 1.0
    uta: float = 0.0
    distill: float = 0.0
    mlm_prob: float = 0.5
    video_mask_ratio: float = 0.8
    image_mask_ratio: float = 0.5
    distill_type: str = "cosine"  # or "mse"


@dataclass
class TeacherSection:
    clip_model: str = "ViT-B-16"  # open_clip architecture of the UTA teacher
    clip_weights: Optional[str] = "openai"  # local weights file, or an open_clip pretrained tag
    clip_quick_gelu: bool = True  # OpenAI CLIP weights were trained with QuickGELU
    clip_overrides: dict = field(default_factory=dict)  # open_clip model kwargs (tests build tiny teachers)
    # False: the student's ImageNet-normalised pixels as they are (the official teacher); True: CLIP's statistics
    clip_renormalize: bool = False
    distill_model: Optional[str] = None  # save_pretrained folder of a smaller vmm model (loss.distill)


# Which parameters skip weight decay (vmm.training.optim.no_weight_decay_names says what each rule spares).
NO_DECAY_RULES = ("official", "extended")


@dataclass
class OptimSection:
    lr: float = 4e-4
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: Optional[float] = None  # max global grad norm; None: no clipping (official)
    no_decay: str = "official"  # which parameters skip weight decay: "official" (1-D and biases) or "extended"


@dataclass
class ScheduleSection:
    epochs: float = 10.0
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    warmup_epochs: float = 1.0
    warmup_steps: Optional[int] = None  # overrides warmup_epochs when set
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr (official min_lr_multi)


@dataclass
class TrainSection:
    output_dir: str = "runs/default"
    seed: int = 42
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, no
    # float32: bf16 autocast over fp32 weights; bfloat16: the whole model cast to bf16 and trained so (the
    # official setup_model with fp16/bf16 on), when the run's precision is bf16
    weights_dtype: str = "float32"
    grad_accum: int = 1
    save_every: int = 1000  # optimizer steps between checkpoints (0: only at the end)
    keep_last: int = 2  # newest checkpoints kept
    log_every: int = 10
    # "auto" (newest in output_dir/checkpoints), a checkpoint folder, or null / "none" / "off" (a new run)
    resume: Optional[str] = None
    progress: bool = True
    tensorboard: bool = True
    cpu: bool = False  # train on CPU even when CUDA is present


@dataclass
class ExportSection:
    trainable_only: bool = False  # final export without frozen tensors (rebuilt from text.init_from)


@dataclass
class TrainConfig:
    """A whole recipe. ``load_config("configs/pretrain/tiny.yaml", ["optim.lr=1e-3"])`` builds one."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    freeze: list = field(default_factory=list)  # parameter name prefixes; "layer.0-3" is a range
    export: ExportSection = field(default_factory=ExportSection)
    source_file: Optional[str] = None  # the recipe path, for messages

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- reading ---------------------------------------------------------------------------------------------
class _SpeltInt(int):
    """A number of a recipe or override that remembers how it was written: a string option takes that text, so a
    folder named 2024_01_15 is not the int 20240115, nor is 1.10 the float's '1.1'."""
    spelt: str


class _SpeltFloat(float):
    spelt: str


def _spelt(value: Any, text: str) -> Any:
    if type(value) in (int, float):
        value = (_SpeltInt if type(value) is int else _SpeltFloat)(value)
        value.spelt = text.strip()
    return value


def _plain(value: Any) -> Any:
    """``value`` with the spelt numbers inside turned back into ints and floats (yaml.safe_dump refuses subclasses,
    and free-form sections reach the model config as they are)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return int(value) if isinstance(value, _SpeltInt) else float(value) if isinstance(value, _SpeltFloat) else value


@functools.lru_cache(maxsize=None)
def _recipe_loader() -> type:
    """PyYAML's safe loader with three of YAML 1.1's traps closed. A key given twice in one mapping is refused
    (YAML keeps the last: a second ``optim:`` section dropped the settings of the first without a word). Only
    true/false are booleans, so ``precision: no`` is the string the option wants, not false. ``1e3`` and ``4e-4``
    are numbers as on the command line (1.1 reads them as strings, which an integer option refused)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice in one mapping, and YAML would keep only the "
                            "last; merge the two", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node):
            return _spelt(super().construct_yaml_int(node), node.value)

        def construct_yaml_float(self, node):
            return _spelt(super().construct_yaml_float(node), node.value)

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    exponent = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789"))
    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
    return Loader


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    import yaml
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        if seen:  # a base: line of a recipe that exists, not the --config path, is what to fix
            raise VmmError(f"config {seen[-1]}: its base {path} {what}; set base: to a recipe file (a path "
                           f"relative to {seen[-1].parent})")
        raise VmmError(f"config file {path} {what}; pass --config configs/pretrain/<recipe>.yaml")
    if path.resolve() in seen:
        raise VmmError(f"config {path} includes itself through 'base'; remove the loop")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_recipe_loader()) or {}
    except UnicodeDecodeError:
        raise VmmError(f"config {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise VmmError(f"config {path}{line} is not valid YAML ({getattr(e, 'problem', None) or e}); fix it") from None
    if not isinstance(data, dict):
        raise VmmError(f"config {path} must be a mapping of sections (model:, data:, ...), got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    # ~ is the home folder here too, as in the recipe's path options (see _expand_home)
    return _deep_merge(_read_yaml(path.parent / os.path.expanduser(str(base)), seen + (path.resolve(),)), data)


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); non-literals stay strings; YAML's null/true/false work.

    >>> parse_override("train.output_dir=runs/x")
    (['train', 'output_dir'], 'runs/x')
    >>> parse_override("loss.uta=0"), parse_override("model.init=null")
    ((['loss', 'uta'], 0), (['model', 'init'], None))
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise VmmError(f"override {text!r} must look like section.key=value (e.g. optim.lr=1e-4)")
    raw = raw.strip()
    try:
        value = _spelt(ast.literal_eval(raw), raw)
    except (ValueError, SyntaxError):
        if raw.startswith(("[", "{")):
            _refuse_yaml_spelling(key.strip(), raw)
        value = _YAML_WORDS.get(raw.lower(), raw)
    return key.strip().split("."), value


_YAML_WORDS = {"null": None, "~": None, "true": True, "false": False}


def _refuse_yaml_spelling(key: str, raw: str) -> None:
    """A list or mapping spelt as in the recipes' YAML (``freeze=[text_encoder.embeddings]``) is no Python literal:
    it was taken as one string and refused as "must be a list, got '[text_encoder.embeddings]'", which reads as
    nonsense. Refused here with the literal to pass, when YAML reads it as a list or mapping."""
    import yaml
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        return  # neither spelling: the type check names the option and what it got
    if isinstance(parsed, (list, dict)):
        raise VmmError(f"override {key}={raw}: strings in a list or mapping need quotes (values are Python literals); "
                       f"pass \"{key}={parsed!r}\"")


def _apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set one dotted key; ``name[i]`` steps into item i of a list, so ``data.train[0].root=...`` works, the
    spelling the one-line errors use for a corpus's options."""
    dotted = ".".join(path)
    steps: list = []
    for part in path:
        m = re.fullmatch(r"([^\[\]]+)((?:\[\d+\])*)", part)
        if not m:
            negative = " (indices count from 0; negative ones are not taken)" if "[-" in part else ""
            raise VmmError(f"override {dotted}: {part!r} is not a key or key[index] (e.g. data.train[0].weight=2)"
                           f"{negative}")
        steps.append(m.group(1).strip())
        steps += [int(i) for i in re.findall(r"\d+", m.group(2))]
    node: Any = data
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, int):
            if not isinstance(node, list):
                raise VmmError(f"override {dotted}: {_shown(steps[:i])} is not a list")
            if step >= len(node):
                raise VmmError(f"override {dotted}: {_shown(steps[:i])} has {len(node)} "
                               f"entr{'y' if len(node) == 1 else 'ies'}, so [{step}] is out of range")
        elif not isinstance(node, dict):
            raise VmmError(f"override {dotted}: {_shown(steps[:i])} is not a section")
        if last:
            node[step] = value
        elif isinstance(step, str) and node.get(step) is None:
            if isinstance(steps[i + 1], int):
                _check_known_key(steps[:i + 1])  # a typo is an unknown key, not a list the recipe lacks
                raise VmmError(f"override {dotted}: the recipe does not set {_shown(steps[:i + 1])}, so there is no "
                               f"entry to change; pass the whole list ({_shown(steps[:i + 1])}=[...])")
            node[step] = {}
            node = node[step]
        else:
            node = node[step]


def _check_known_key(keys: list) -> None:
    """The unknown-key error of :func:`_build` for a dotted key that no section of TrainConfig has."""
    cls: Any = TrainConfig
    for n, key in enumerate(keys):
        if not dataclasses.is_dataclass(cls):
            return  # inside a free-form mapping (model.vision...): checked later
        names = _recipe_keys(cls)
        if key not in names:
            raise _unknown_key(".".join(keys[:n]), key, names)
        cls = typing.get_type_hints(cls)[key]


def _recipe_keys(cls: type) -> list[str]:
    """The keys a recipe may set in section ``cls`` (source_file is filled in by load_config)."""
    return [f.name for f in dataclasses.fields(cls) if f.name != "source_file"]


def _unknown_key(where: str, key: str, names: list[str]) -> VmmError:
    from vmm.models.registry import close_match
    prefix = where + "." if where else ""
    close = close_match(key, names)
    return VmmError(f"unknown config key {prefix}{key}; valid keys{' of ' + where if where else ''}: "
                    f"{', '.join(names)}" + (f"; did you mean {prefix}{close}?" if close else ""))


def _shown(steps: list) -> str:
    out = ""
    for s in steps:
        out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else s)
    return out


# -- typed construction ----------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except VmmError:
                pass  # the next type may take it; the message below names them all
        wanted = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise VmmError(f"option {where} must be {wanted}{' or null' if type(None) in args else ''}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 4e-4 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # No option means anything by inf or nan: they passed the range checks (inf > 0) and trained to NaN
            # (optim.lr, loss weights) or crashed in a step count (schedule.epochs).
            if not math.isfinite(number):
                raise VmmError(f"option {where} must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return getattr(value, "spelt", str(value))
    elif tp is list:
        if isinstance(value, (list, tuple)):
            # Mappings in a list are sections (data.train's corpora), whose string options are typed when built.
            return [v if isinstance(v, dict) else _plain(v) for v in value]
    elif tp is dict:
        if isinstance(value, dict):
            return _plain(value)
    raise VmmError(f"option {where} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise VmmError(f"section {where or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = _recipe_keys(cls)
    unknown = sorted(set(data) - set(names), key=str)  # YAML keys need not be strings
    if unknown:
        raise _unknown_key(where, unknown[0], names)
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key = f"{where}.{name}" if where else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key)
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    return cls(**kwargs)


def _check_model_overrides(cfg: TrainConfig) -> None:
    from vmm.models.config import VideoMambaConfig
    from vmm.models.text import TextConfig
    for section, dc in (("vision", VideoMambaConfig), ("text", TextConfig)):
        valid = sorted(f.name for f in dataclasses.fields(dc))
        bad = sorted(set(getattr(cfg.model, section)) - set(valid), key=str)
        if bad:
            raise _unknown_key(f"model.{section}", bad[0], valid)


def _check_values(cfg: TrainConfig) -> None:
    checks = [
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (cfg.data.caption_sampling in ("random", "all"), "data.caption_sampling must be 'random' or 'all'"),
        (0.0 <= cfg.data.hflip <= 1.0, "data.hflip must be a probability in [0, 1]"),
        (cfg.loss.distill_type in ("cosine", "mse"), "loss.distill_type must be 'cosine' or 'mse'"),
        (0.0 <= cfg.loss.mlm_prob <= 1.0, "loss.mlm_prob must lie in [0, 1]"),
        (0.0 <= cfg.loss.video_mask_ratio < 1.0, "loss.video_mask_ratio must lie in [0, 1)"),
        (0.0 <= cfg.loss.image_mask_ratio < 1.0, "loss.image_mask_ratio must lie in [0, 1)"),
        (all(getattr(cfg.loss, k) >= 0 for k in ("vtc", "vtm", "mlm", "uta", "distill")),
         "loss weights (loss.vtc, vtm, mlm, uta, distill) must be >= 0"),
        (cfg.train.precision in ("auto", "bf16", "fp16", "no"), "train.precision must be auto, bf16, fp16 or no"),
        (cfg.train.weights_dtype in ("float32", "bfloat16"), "train.weights_dtype must be float32 or bfloat16"),
        (cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (cfg.train.save_every >= 0, "train.save_every must be >= 0 (0: save only at the end)"),
        (cfg.train.keep_last >= 1, "train.keep_last must be >= 1"),
        (cfg.train.log_every >= 1, "train.log_every must be >= 1"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (len(cfg.optim.betas) == 2, "optim.betas must be a list of two numbers"),
        (cfg.schedule.epochs > 0 or (cfg.schedule.max_steps or 0) > 0,
         "schedule.epochs or schedule.max_steps must be > 0"),
        (cfg.schedule.max_steps is None or cfg.schedule.max_steps >= 1,
         "schedule.max_steps must be >= 1 (or null: train for schedule.epochs)"),
        (cfg.schedule.warmup_steps is None or cfg.schedule.warmup_steps >= 0, "schedule.warmup_steps must be >= 0"),
        (cfg.schedule.warmup_steps is not None or cfg.schedule.warmup_epochs >= 0,
         "schedule.warmup_epochs must be >= 0 (0: no warmup)"),
        (0.0 <= cfg.schedule.min_lr_ratio <= 1.0, "schedule.min_lr_ratio must lie in [0, 1] (a fraction of optim.lr)"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (cfg.optim.eps > 0, "optim.eps must be > 0"),
        (cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0, "optim.grad_clip must be > 0 (or null: no clipping)"),
        (cfg.optim.no_decay in NO_DECAY_RULES,
         f"optim.no_decay must be {' or '.join(NO_DECAY_RULES)}, got {cfg.optim.no_decay!r}"),
        (cfg.data.max_text_len is None or cfg.data.max_text_len >= 2,
         "data.max_text_len must be >= 2 (room for [CLS] and [SEP]; null: the model's)"),
        (0 <= cfg.train.seed < 2 ** 32, "train.seed must lie in [0, 2**32)"),
        (cfg.data.max_retries >= 1, "data.max_retries must be >= 1"),
        # Above half, runs of replaced samples hit data.max_retries and stop the run anyway; and a corpus
        # missing most of its files is more likely the wrong root than a lossy download.
        (0.0 <= cfg.data.max_missing <= 0.5,
         "data.max_missing must lie in [0, 0.5] (a fraction of a corpus's media files)"),
        (cfg.data.prefetch_factor >= 1, "data.prefetch_factor must be >= 1"),
        (cfg.loss.vtc + cfg.loss.vtm + cfg.loss.mlm + cfg.loss.uta + cfg.loss.distill > 0,
         "all loss weights are 0; enable at least one of loss.vtc/vtm/mlm/uta/distill"),
    ]
    for ok, message in checks:
        if not ok:
            raise VmmError(message)
    if not cfg.data.train:
        raise VmmError(f"no training data: set data.train to a list of {{anno, root}} or {{shards}} entries"
                       f"{' in ' + cfg.source_file if cfg.source_file else ''}")
    sources = []
    for i, entry in enumerate(cfg.data.train):
        src = entry if isinstance(entry, SourceConfig) else _build(SourceConfig, entry, f"data.train[{i}]")
        if (src.anno is None) == (src.shards is None):
            raise VmmError(f"data.train[{i}] needs exactly one of 'anno' (annotation JSON) or 'shards' (tar files)")
        if src.weight <= 0:
            raise VmmError(f"data.train[{i}].weight must be > 0")
        sources.append(src)
    cfg.data.train = sources
    cfg.optim.betas = [_coerce(b, float, "optim.betas") for b in cfg.optim.betas]
    if not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise VmmError(f"optim.betas must both lie in [0, 1), got {cfg.optim.betas}")
    # An unset shell variable (model.init=$STAGE1) is no path: model.init and train.resume '' were dropped without a
    # word (stage 2 trained from random weights), and teacher.clip_weights '' read as the working folder
    paths = [("model.init", cfg.model.init), ("model.vision_init", cfg.model.vision_init),
             ("teacher.distill_model", cfg.teacher.distill_model), ("teacher.clip_weights", cfg.teacher.clip_weights),
             ("train.resume", cfg.train.resume)]
    for key, value in paths:
        if isinstance(value, str) and not value.strip():
            raise VmmError(f"{key} is empty ({value!r}); pass a path, or leave it out ({key}=null)")
    if not cfg.train.output_dir.strip():  # an unset shell variable (train.output_dir=$RUN): the run would write here
        raise VmmError("train.output_dir is empty; pass the run's folder, e.g. train.output_dir=runs/my_run")
    cfg.train.resume = _resume_setting(cfg.train.resume)
    if cfg.export.trainable_only and not cfg.freeze:
        raise VmmError("export.trainable_only needs a freeze list (nothing is frozen, so everything is trainable)")


RESUME_OFF = ("none", "off", "no")


def _resume_setting(value: Optional[str]) -> Optional[str]:
    """``train.resume`` with its keywords in one spelling: "auto" in any case, and None for the words that mean no
    resume. "auto" being a keyword, ``train.resume=none`` (or ``resume: off`` in a recipe that overrides its base's
    ``auto``) was taken as a checkpoint folder named "none" and refused.

    >>> _resume_setting("AUTO"), _resume_setting(" none "), _resume_setting("Off"), _resume_setting("runs/a/none")
    ('auto', None, None, 'runs/a/none')
    """
    if value is None:
        return None
    word = value.strip().lower()
    if word in RESUME_OFF:
        return None
    return "auto" if word == "auto" else value


def _expand_home(cfg: TrainConfig) -> None:
    """``~/...`` in the recipe's paths is the home folder, as in the rest of vmm: the shell does not expand it in
    ``key=~/x`` nor in YAML, and a run wrote into a folder named ``~`` (which ``rm -r ~`` then removes the home of)."""
    def home(path):
        if isinstance(path, list):
            return [home(p) for p in path]
        return os.path.expanduser(path) if isinstance(path, str) else path
    for section, name in (("model", "init"), ("model", "vision_init"), ("teacher", "distill_model"),
                          ("train", "output_dir"), ("train", "resume")):
        setattr(getattr(cfg, section), name, home(getattr(getattr(cfg, section), name)))
    for src in cfg.data.train:
        src.anno, src.root, src.shards = home(src.anno), home(src.root), home(src.shards)


def unused_options(cfg: TrainConfig) -> list[str]:
    """Warning lines for options set away from their defaults that the recipe's losses never read.

    A loss switched off takes its settings with it: a run with ``loss.uta=0`` has no teacher and no masking, so a
    changed ``loss.video_mask_ratio`` or ``teacher.clip_weights`` would otherwise be dropped without a word.
    Values equal to the defaults stay quiet, so a stage-2 recipe inheriting the stage-1 settings does not warn.
    """
    groups = [
        ("loss.uta=0 (no CLIP teacher, no masking)", "loss.uta > 0", cfg.loss.uta == 0,
         [("loss", ("video_mask_ratio", "image_mask_ratio")),
          ("teacher", ("clip_model", "clip_weights", "clip_quick_gelu", "clip_overrides", "clip_renormalize"))]),
        ("loss.mlm=0", "loss.mlm > 0", cfg.loss.mlm == 0, [("loss", ("mlm_prob",))]),
        ("loss.distill=0", "loss.distill > 0", cfg.loss.distill == 0,
         [("loss", ("distill_type",)), ("teacher", ("distill_model",))]),
        ("data.num_workers=0 (no decoding workers)", "data.num_workers > 0", cfg.data.num_workers == 0,
         [("data", ("prefetch_factor",))]),
    ]
    lines = []
    for reason, fix, off, options in groups:
        if not off:
            continue
        changed = []
        for section, names in options:
            default = type(getattr(cfg, section))()
            for n in names:
                value = getattr(getattr(cfg, section), n)
                if value != getattr(default, n):
                    changed.append(f"{section}.{n}" if isinstance(value, (dict, list)) else f"{section}.{n}={value!r}")
        if changed:
            one = len(changed) == 1
            lines.append(f"warning: {', '.join(changed)} {'is' if one else 'are'} not used with {reason}; remove "
                         f"{'it' if one else 'them'} or set {fix}")
    return lines


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a recipe, apply ``key=value`` overrides and check every key and value.

    >>> import vmm, pathlib
    >>> recipe = pathlib.Path(vmm.__file__).parents[1] / "configs" / "pretrain" / "tiny.yaml"
    >>> cfg = load_config(recipe, ["optim.lr=1e-3"])
    >>> cfg.optim.lr
    0.001
    """
    if isinstance(path, str) and not path.strip():  # an unset "$RECIPE": Path("") is the working folder
        raise VmmError(f"--config is empty ({path!r}); pass --config configs/pretrain/<recipe>.yaml")
    # A quoted "~/recipes/a.yaml" or --config=~/a.yaml, which the shell leaves alone, is the home folder here too
    path = Path(path).expanduser()
    data = _read_yaml(path)
    # A run's train_config.yaml records the recipe it was read from; as a recipe itself (to rerun or rebuild the
    # run's model) that record is this file, so the saved one is dropped rather than refused as an unknown key.
    data.pop("source_file", None)
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    cfg = _build(TrainConfig, data, "")
    cfg.source_file = str(path)
    _check_model_overrides(cfg)
    _check_values(cfg)
    _expand_home(cfg)
    return cfg
