"""The trainer loop (Dassl's `TrainerX`, lean): build, train, checkpoint, resume, test.

A method subclasses `TrainerBase` and provides `build_model` and `compute_loss`; the
engine owns the data, the optimizer step (precision, scaler, NaN check), the per-epoch
LR schedule, printing, checkpoints, auto-resume and evaluation. Construction order and
RNG use follow the reference (docs/engine.md, "Reproducibility and RNG order"): data loaders first, then CLIP, then
the method's parameters; one `iter()` of the train loader per epoch.
"""
import datetime
import os
import random
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import yaml
from tqdm import tqdm

from engine.checkpoint import (CHECKPOINT_PREFIX, checkpoint_epochs, latest_checkpoint, load_checkpoint,
                               save_checkpoint)
from engine.clip_loading import backbone_fingerprint, load_clip_to_cpu
from engine.dataset import subsample_splits
from engine.errors import CheckpointError, ConfigError, MissingFileError
from engine.evaluator import Classification
from engine.io import atomic_torch_save, atomic_write_json
from engine.loader import DataManager
from engine.optim import build_lr_scheduler, build_optimizer
from engine.precision import resolve_precision
from engine.registry import TRAINERS, check_trainer_class

RESUME_FILE = "resume.pth.tar"


@dataclass
class Batch:
    """One training batch on the run's device."""
    images: torch.Tensor   # (B, 3, H, W)
    labels: torch.Tensor   # (B,)
    impaths: list


class AverageMeter:
    def __init__(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _rng_state():
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainerBase:
    """Base class of every registered trainer (the contract: docs/engine.md, "The trainer contract").

    Required of a subclass: the class attribute `config_node`, the `TRAINER.<NODE>` holding the
    method's keys (its `PREC` is used; there is no default, registration refuses a class without
    it), and the methods `build_model` and `compute_loss`.

    Class attributes with defaults:
        checkpoint_name: checkpoint folder name, as in the official code.
        trainable: name prefixes (in `self.model.named_parameters()`) that stay trainable.
        class_dependent_buffers: names of the checkpoint module's buffers built from the run's class
            names; never taken from a checkpoint, which is what lets a prompt trained on base classes
            be evaluated on new ones. A method with other such buffers extends the tuple.
        split_protocol: `(cfg, train, val, test) -> (train_x, val, test)` after few-shot sampling
            (default: the SUBSAMPLE_CLASSES half of each); PromptKD trains on every class.
        selects_on_test: the method's val split is test data, so a `best_val` checkpoint was
            selected on a test set; results.json says so.
    """

    checkpoint_name = "prompt_learner"
    trainable = ("prompt_learner",)
    class_dependent_buffers = ("token_prefix", "token_suffix")
    split_protocol = staticmethod(subsample_splits)
    selects_on_test = False

    def __init__(self, cfg):
        check_trainer_class(type(self))
        self.cfg = cfg
        self.device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.output_dir = cfg.OUTPUT_DIR
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.batch_idx = self.num_batches = 0  # position in the current epoch (set by `_run_epoch`)
        self.best_result = -np.inf             # best val accuracy so far (TEST.FINAL_MODEL best_val)
        self.time_start = None                 # set when training starts
        self.loaded_epoch = None               # epoch of the weights under test (loaded, or the last trained)
        self.loaded_best = False               # whether those weights are a `best_val` selection
        self._backbone = None                  # the CLIP file's fingerprint, computed when first needed
        self.precision = resolve_precision(self.prec, self.device)
        self.scaler = self.precision.grad_scaler()

        self.dm = DataManager(cfg, use_cuda=self.device.type == "cuda", split_protocol=self.split_protocol)
        self.train_loader_x = self.dm.train_loader_x
        self.val_loader = self.dm.val_loader
        self.test_loader = self.dm.test_loader
        self.num_classes = self.dm.num_classes
        self.lab2cname = self.dm.lab2cname
        self.classnames = self.dm.classnames

        self.model = self.build_trainer_model()
        self.has_trainable = any(p.requires_grad for p in self.model.parameters())
        self.optim = build_optimizer(self.model.parameters(), cfg.OPTIM) if self.has_trainable else None
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM) if self.optim else None
        self.evaluator = Classification(self.lab2cname, cfg.TEST.PER_CLASS_RESULT)

    # ------------------------------------------------------------------------------
    # What a method provides
    # ------------------------------------------------------------------------------
    @property
    def prec(self):
        if self.config_node not in self.cfg.TRAINER:
            raise ConfigError(f"{type(self).__name__}.config_node is {self.config_node!r}, but the config has no "
                              f"TRAINER.{self.config_node}: register the trainer with the config hook that adds it "
                              "(TRAINERS.register(name, config=...))")
        return self.cfg.TRAINER[self.config_node].PREC

    def build_model(self, clip_model, classnames):
        """Required: return the nn.Module (frozen CLIP + learnable parts); runs on the CPU."""
        raise NotImplementedError

    def compute_loss(self, batch):
        """Required: return `(loss, logits)`; logits may be None (then no `acc` is logged)."""
        raise NotImplementedError

    def model_inference(self, images, text_features=None):
        """Logits at test time; `text_features` are the cached ones when the model has them."""
        if text_features is not None:
            return self.model(images, text_features=text_features)
        return self.model(images)

    def checkpoint_module(self):
        """The module whose state dict is saved (the official registered model)."""
        return self.model.prompt_learner

    def checkpoint_state_dict(self):
        return self.checkpoint_module().state_dict()

    def load_checkpoint_state_dict(self, state_dict):
        """Load weights from a checkpoint, recomputing class-dependent buffers; a trainable tensor
        the checkpoint does not provide raises `CheckpointMismatch`."""
        state_dict = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in self.class_dependent_buffers}
        module = self.checkpoint_module()
        try:
            missing, unexpected = module.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:
            raise CheckpointMismatch(
                f"{err}. A class-specific context (CSC) only transfers to the same number of classes; other shapes "
                "must match the training config") from err
        trainable = {name for name, p in module.named_parameters() if p.requires_grad}
        missing_trainable = [k for k in missing if k in trainable]
        if missing_trainable:
            raise CheckpointMismatch(f"it has no {missing_trainable}")
        if unexpected:  # missing frozen tensors keep their CLIP values
            print(f"Warning: unexpected checkpoint keys {unexpected}")

    def apply_checkpoint(self, checkpoint, path):
        """Check that a loaded checkpoint fits this run (backbone, every trainable tensor) and load it."""
        recorded = checkpoint.get("backbone")
        if isinstance(recorded, dict) and recorded.get("sha256") != self.backbone["sha256"]:
            raise CheckpointError(
                f"{path} was trained with the backbone {recorded.get('name')} (SHA-256 {recorded.get('sha256')}), "
                f"this run uses {self.backbone['name']} (SHA-256 {self.backbone['sha256']}): its prompts only fit "
                "the CLIP they were trained with. Set MODEL.BACKBONE.NAME (--backbone) to that file")
        try:
            self.load_checkpoint_state_dict(checkpoint["state_dict"])
        except CheckpointMismatch as err:
            raise CheckpointError(f"{path} does not fit {self.cfg.TRAINER.NAME}: {err}. "
                                  f"{checkpoint_writer(path, checkpoint['state_dict'])}") from None

    @property
    def backbone(self):
        """The CLIP this run uses, as recorded in its checkpoints (name and file SHA-256)."""
        if self._backbone is None:
            self._backbone = backbone_fingerprint(self.cfg.MODEL.BACKBONE.NAME)
        return self._backbone

    def report_frozen_mismatch(self, frozen):
        """Warn when an official whole-model file's frozen CLIP tensors differ from our backbone's.

        Official loaders overwrite the backbone with the file's copy; we keep the configured one.
        """
        ours = self.model.state_dict()
        differ = [k for k, v in frozen.items()
                  if k not in ours or v.shape != ours[k].shape or not torch.equal(v.to(ours[k]), ours[k])]
        if differ:
            print(f"Warning: {len(differ)} of the checkpoint's {len(frozen)} frozen CLIP tensors differ from the "
                  f"backbone {self.cfg.MODEL.BACKBONE.NAME} (e.g. {differ[:3]}); the checkpoint was trained with "
                  "another CLIP. Keeping the configured backbone (the official loader would overwrite it).")

    # ------------------------------------------------------------------------------
    # Model construction
    # ------------------------------------------------------------------------------
    def is_trainable(self, name):
        return name.startswith(self.trainable)

    def build_trainer_model(self):
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = self.precision.prepare_clip(load_clip_to_cpu(cfg.MODEL.BACKBONE.NAME))
        if tuple(cfg.INPUT.SIZE) != (clip_model.visual.input_resolution,) * 2:
            raise ConfigError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the CLIP input resolution "
                              f"{clip_model.visual.input_resolution}")
        print("Building custom CLIP")
        model = self.build_model(clip_model, self.classnames)
        print("Turning off gradients in both the image and the text encoder")
        for name, param in model.named_parameters():
            param.requires_grad_(self.is_trainable(name))
        enabled = sorted(name for name, p in model.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {enabled}")
        return model.to(self.device)

    # ------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------
    def train(self):
        if not self.has_trainable:
            raise ValueError(f"Trainer {self.cfg.TRAINER.NAME} has nothing to train; run it with --eval-only")
        self.before_train()
        # on stderr, and only on a terminal (disable=None): logs stay free of bar redraws
        epochs = tqdm(range(self.start_epoch, self.max_epoch), desc="train", unit="epoch", initial=self.start_epoch,
                      total=self.max_epoch, disable=None)
        for self.epoch in epochs:
            self._run_epoch()
            self._after_epoch()
        epochs.close()
        self._after_train()

    def before_train(self):
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.resume_model_if_exist(directory)
        self.time_start = time.time()

    def _run_epoch(self):
        self.model.train()
        meters = {}
        batch_time, data_time = AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            for key, value in summary.items():
                meters.setdefault(key, AverageMeter()).update(value)
            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                left = self.num_batches - self.batch_idx - 1 + (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * left)))
                losses = " ".join(f"{k} {m.val:.4f} ({m.avg:.4f})" for k, m in meters.items())
                print(f"epoch [{self.epoch + 1}/{self.max_epoch}] batch [{self.batch_idx + 1}/{self.num_batches}] "
                      f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) data {data_time.val:.3f} ({data_time.avg:.3f}) "
                      f"{losses} lr {self.optim.param_groups[0]['lr']:.4e} eta {eta}")
            end = time.time()

    def _parse_batch_train(self, batch):
        return Batch(batch["img"].to(self.device, non_blocking=True),
                     batch["label"].to(self.device, non_blocking=True), batch["impath"])

    def forward_backward(self, batch):
        """One step: loss -> zero_grad -> NaN check -> backward -> SGD step (-> LR step)."""
        batch = self._parse_batch_train(batch)
        with self.precision.autocast():
            loss, logits = self.compute_loss(batch)
        self.optim.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            if not torch.isfinite(loss).all():
                raise FloatingPointError("Loss is infinite or NaN!")
            loss.backward()
            self.optim.step()
        summary = {"loss": loss.item()}
        if logits is not None:
            summary["acc"] = 100.0 * logits.argmax(dim=1).eq(batch.labels).float().mean().item()
        if self.batch_idx + 1 == self.num_batches:
            self.sched.step()
        return summary

    def _after_epoch(self):
        last_epoch = self.epoch + 1 == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        if self.cfg.TEST.FINAL_MODEL == "best_val" and not self.cfg.TEST.NO_TEST:
            result = self.test(split="val", write_results=False)
            if result > self.best_result:
                self.best_result = result
                self._save_model(self.epoch, file_name="model-best.pth.tar", val_result=result)
        if last_epoch or (freq > 0 and (self.epoch + 1) % freq == 0):
            self._save_model(self.epoch)
        if not last_epoch:
            self._save_resume_state()

    def _after_train(self):
        print("Finish training")
        resume_path = os.path.join(self.output_dir, self.checkpoint_name, RESUME_FILE)
        if os.path.exists(resume_path):
            os.remove(resume_path)  # superseded by the final checkpoint
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
                self.loaded_epoch = self.max_epoch
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        print(f"Elapsed: {elapsed}")

    # ------------------------------------------------------------------------------
    # Checkpoints and resume
    # ------------------------------------------------------------------------------
    def _training_state(self, epoch):
        return {"state_dict": self.checkpoint_state_dict(), "epoch": epoch + 1,
                "optimizer": self.optim.state_dict(), "scheduler": self.sched.state_dict(),
                "backbone": self.backbone}

    def _save_model(self, epoch, file_name=None, val_result=None):
        state = self._training_state(epoch)
        state["val_result"] = val_result
        save_checkpoint(state, os.path.join(self.output_dir, self.checkpoint_name), epoch + 1, file_name)

    def _save_resume_state(self):
        """After every epoch: weights, optimizer, scheduler and RNG states, so an interrupted
        run continues exactly where it stopped (the official code only saves the last epoch)."""
        state = self._training_state(self.epoch)
        state["rng"] = _rng_state()
        extra = self.extra_resume_state()
        if extra is not None:
            state["extra"] = extra
        atomic_torch_save(state, os.path.join(self.output_dir, self.checkpoint_name, RESUME_FILE))

    def resume_model_if_exist(self, directory):
        """Restore the newest of the last checkpoint and the per-epoch resume state."""
        save_dir = os.path.join(directory, self.checkpoint_name)
        # the resume state first: on a tie (a periodic checkpoint of the same epoch) it has more to restore
        candidates = [p for p in (os.path.join(save_dir, RESUME_FILE), latest_checkpoint(save_dir))
                      if p and os.path.isfile(p)]
        if not candidates:
            return 0
        states = [(load_checkpoint(p), p) for p in candidates]
        state, path = max(states, key=lambda s: s[0]["epoch"])
        print(f"Found checkpoint at {directory} (will resume training)")
        print(f'Loading checkpoint from "{path}"')
        self.apply_checkpoint(state, path)
        print("Loaded model weights")
        # A file of the official code (a rerun into its output folder) may not restore: KgCoOp's and
        # MaPLe's optimizers hold other parameters, and every pickled scheduler is an inert
        # placeholder here. Then the weights are kept, the optimizer starts afresh (no momentum)
        # and the schedule is stepped to the checkpoint's epoch.
        try:
            self.optim.load_state_dict(state["optimizer"])
            print("Loaded optimizer")
        except (ValueError, KeyError):
            self.optim = build_optimizer(self.model.parameters(), self.cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
            print("Optimizer state not restorable (a file of the official code): momentum reset")
        try:
            self.sched.load_state_dict(state["scheduler"])
            print("Loaded scheduler")
        except (TypeError, ValueError, KeyError, AttributeError):
            self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
                for _ in range(state["epoch"]):
                    self.sched.step()
            print(f"Scheduler state not restorable (a file of the official code): stepped to epoch {state['epoch']}")
        if "rng" in state:
            _set_rng_state(state["rng"])
        if "extra" in state:
            self.load_extra_resume_state(state["extra"])
        print(f"Previous epoch: {state['epoch']}")
        return state["epoch"]

    def extra_resume_state(self):
        """Method state an interrupted run needs besides weights, optimizer and scheduler (e.g. a
        running average over epochs), saved with the per-epoch resume state; None: nothing."""
        return None

    def load_extra_resume_state(self, state):
        """Restore what `extra_resume_state` returned."""

    def load_model(self, directory, epoch=None):
        """Load `<dir>/<name>/model.pth.tar-<epoch>` (negative: the latest; None: model-best,
        else the latest) for evaluation."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        save_dir = os.path.join(directory, self.checkpoint_name)
        epochs = checkpoint_epochs(save_dir)
        if epoch is None and os.path.exists(os.path.join(save_dir, "model-best.pth.tar")):
            path = os.path.join(save_dir, "model-best.pth.tar")
        else:
            if not epochs:
                raise MissingFileError(
                    f'No checkpoint "{CHECKPOINT_PREFIX}<E>" found in "{save_dir}". --model-dir is the output folder '
                    f"of a {self.cfg.TRAINER.NAME} training run (it holds {self.checkpoint_name}/)"
                    + (f"; {directory} holds {sorted(os.listdir(directory))[:8]}" if os.path.isdir(directory) else ""))
            if epoch is None or epoch < 0:
                epoch = epochs[-1]
            path = os.path.join(save_dir, f"{CHECKPOINT_PREFIX}{epoch}")
            if epoch not in epochs:
                raise MissingFileError(f'No checkpoint "{path}" (--load-epoch {epoch}): the epochs saved in {save_dir} '
                                       f"are {', '.join(map(str, epochs))}")
        checkpoint = load_checkpoint(path)
        print(f'Loading weights to {self.checkpoint_name} from "{path}" (epoch = {checkpoint.get("epoch")})')
        self.apply_checkpoint(checkpoint, path)
        self.loaded_epoch = checkpoint.get("epoch")
        self.loaded_best = checkpoint.get("val_result") is not None  # a `best_val` selection

    # ------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------
    @torch.no_grad()
    def test(self, split=None, write_results=True):
        """Evaluate, print the result block, write `results.json`; returns the accuracy."""
        self.model.eval()
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            loader = self.val_loader
        else:
            split, loader = "test", self.test_loader
        print(f"Evaluate on the *{split}* set")
        with self.precision.autocast():
            text_features = self.cached_text_features()
            for batch in tqdm(loader, desc=f"eval {split}", leave=False, disable=None):
                images = batch["img"].to(self.device, non_blocking=True)
                labels = batch["label"].to(self.device, non_blocking=True)
                self.evaluator.process(self.model_inference(images, text_features), labels)
        results = self.evaluator.evaluate()
        if write_results:
            self._write_results(split, results)
        return results["accuracy"]

    def cached_text_features(self):
        """Image-independent text features, computed once per evaluation when the model can."""
        encode_text = getattr(self.model, "encode_text", None)
        if self.cfg.TEST.CACHE_TEXT_FEATURES and callable(encode_text):
            return encode_text()
        return None

    def _selection_record(self):
        """For a `best_val` checkpoint: the epoch selected and whether val was test data."""
        if not self.loaded_best:
            return {}
        return {"selected_epoch": self.loaded_epoch, "selected_on_test": self.selects_on_test}

    def _write_results(self, split, results):
        cfg = self.cfg
        record = {
            "trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME,
            "subsample": cfg.DATASET.SUBSAMPLE_CLASSES, "num_shots": cfg.DATASET.NUM_SHOTS,
            "num_shots_used": self.dm.dataset.shots_used,
            "seed": cfg.SEED, "backbone": cfg.MODEL.BACKBONE.NAME, "split": split,
            "epoch": self.loaded_epoch,
            "num_classes": self.num_classes,
            **self._selection_record(),
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()},
            "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_json(os.path.join(self.output_dir, "results.json"), record, indent=2)


class CheckpointMismatch(CheckpointError):
    """Raised by `load_checkpoint_state_dict` when the weights do not fit; `apply_checkpoint` adds the file."""


def checkpoint_writer(path, state_dict):
    """Which method wrote a checkpoint: its run folder's config.yaml, else a look at its keys."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    config = os.path.join(run_dir, "config.yaml")
    try:
        with open(config) as f:
            trainer = ((yaml.safe_load(f) or {}).get("TRAINER") or {}).get("NAME")
        if trainer:
            return f"It was written by {trainer} (per {config}); evaluate it with --trainer {trainer} and that config"
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    keys = list(state_dict)
    return (f"No config.yaml beside it says which method wrote it; its keys are {keys[:8]}"
            + (f" and {len(keys) - 8} more" if len(keys) > 8 else ""))


def build_trainer(cfg):
    print(f"Loading trainer: {cfg.TRAINER.NAME}")
    trainer_cls = TRAINERS.get(cfg.TRAINER.NAME)
    print(f"Loading dataset: {cfg.DATASET.NAME}")
    return trainer_cls(cfg)

