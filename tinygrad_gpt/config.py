"""Training settings: the presets, TrainConfig and its checks, the learning-rate schedule, resumed runs' settings.

A preset fixes the model and the optimisation; any field can be overridden (CLI: --n-layer 6, --lr 6e-4, ...).
A resumed run takes its settings from its checkpoint: the training settings may change (max_iters, lr, ...), the
model's shape and the seed may not.

TrainConfig holds the model's GPTConfig (`tc.model`) beside the training settings, no field in both. Outside, the
settings are one flat set of names (`setting_names()`): the presets, the command line's flags (cli.py makes one of
each field, its help from the field's metadata), train()'s keyword overrides and the "train" record of a
checkpoint's meta.json all say `block_size`, `lr`, ... alike (`flat()` and `from_flat()` convert). A new setting is
one line: a field here (or in GPTConfig) with its help.
"""
import dataclasses
import math
from pathlib import Path

from .checkpoint import META_FILE
from .errors import CheckpointError, ConfigError
from .model import GPTConfig, setting
from .optim import AdamW

PRESETS = {
    # the lecture notebooks' small baseline (0.21M parameters): val 1.82 after 5000 steps in the lecture
    "small": dict(batch_size=16, block_size=32, n_embd=64, n_head=4, n_layer=4, dropout=0.0,
                  lr=1e-3, lr_schedule="constant", warmup_iters=0, max_iters=5000, eval_interval=500,
                  grad_clip=0.0),
    # the lecture's GPU run (10.8M parameters)
    "lecture": dict(batch_size=64, block_size=256, n_embd=384, n_head=6, n_layer=6, dropout=0.2,
                    lr=3e-4, lr_schedule="constant", warmup_iters=0, max_iters=5000, eval_interval=500,
                    grad_clip=0.0),
    # the default: the best validation loss reachable in about 5 minutes on a 2-core CPU, compile included (README,
    # "Results"; the candidates compared in docs/cpu-performance.md, "The cpu preset"). nanoGPT's CPU recipe shape
    # (C=128, H=4, L=4, T=64): in a fixed time, more steps of this model beat a wider or deeper one, and batches of
    # 32 at lr 2e-3 beat 16 at 1e-3.
    "cpu": dict(batch_size=32, block_size=64, n_embd=128, n_head=4, n_layer=4, dropout=0.0,
                lr=2e-3, lr_schedule="cosine", warmup_iters=100, min_lr=2e-4, max_iters=3800, eval_interval=250,
                grad_clip=1.0),
}
DEFAULT_PRESET = "cpu"
SCHEDULES = ("constant", "cosine")
MODEL_SETTINGS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size")  # (the corpus')
CHANGEABLE_ON_RESUME = ("dropout",)     # the one model setting a resumed run may change


@dataclasses.dataclass
class TrainConfig:
    """The settings of a training run. The defaults are what a preset leaves unset."""
    preset: str = setting(DEFAULT_PRESET, "named settings, listed below", choices=tuple(PRESETS))
    data: str = setting(None, "UTF-8 text corpus (default: the packaged tiny Shakespeare)", metavar="FILE")
    out: str = setting(None, "run directory for checkpoints, log, plot (default: runs/PRESET)", metavar="DIR")
    device: str = setting("cpu", "cpu (NumPy) or cuda (CuPy)", choices=("cpu", "cuda"))
    seed: int = setting(1337, "seed of the initialisation, batches and dropout")
    batch_size: int = setting(16, "rows of each batch (all ranks together, data-parallel)", group="model")
    model: GPTConfig = dataclasses.field(default_factory=lambda: GPTConfig(vocab_size=None))
    lr: float = setting(1e-3, "peak learning rate", group="optimisation")
    min_lr: float = setting(None, "where the cosine ends (default: lr / 10)", group="optimisation")
    lr_schedule: str = setting("constant", "after the linear warmup", choices=SCHEDULES, group="optimisation")
    warmup_iters: int = setting(0, "linear warmup steps", group="optimisation")
    max_iters: int = setting(1000, "optimizer steps in the whole run", group="optimisation")
    weight_decay: float = setting(0.01, "AdamW decoupled weight decay, on every parameter (the lecture's "
                                  "torch.optim.AdamW default)", group="optimisation")
    beta1: float = setting(0.9, "AdamW's first-moment decay", group="optimisation")
    beta2: float = setting(0.999, "AdamW's second-moment decay", group="optimisation")
    grad_clip: float = setting(0.0, "clip the global gradient norm to this; 0: off", group="optimisation")
    grad_accum: int = setting(1, "average the gradients of N micro-batches of batch_size/N rows per step (memory "
                              "of one micro-batch, result of the whole batch)", metavar="N", group="optimisation")
    eval_interval: int = setting(100, "steps between evaluations (and checkpoints)", group="evaluation")
    eval_iters: int = setting(20, "fixed batches per split per evaluation", group="evaluation")
    sample_chars: int = setting(500, "characters sampled at the end; 0: none", group="evaluation")

    # ---- the flat names ----------------------------------------------------------------------------------------
    def flat(self):
        """{setting: value} in setting_names() order: the training fields, the model's in place of `model`."""
        return {k: getattr(self.model if k in MODEL_SETTINGS else self, k) for k in setting_names()}

    @classmethod
    def from_flat(cls, settings):
        """A TrainConfig (not yet validated) from flat settings; ConfigError names an unknown one."""
        unknown = sorted(set(settings) - set(setting_names()))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        model = {k: v for k, v in settings.items() if k in MODEL_SETTINGS}
        return cls(**{k: v for k, v in settings.items() if k not in MODEL_SETTINGS},
                   model=GPTConfig(vocab_size=None, **model))

    def model_config(self, vocab_size):
        """The model's GPTConfig, with the vocabulary size the corpus gives."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)

    def optimizer(self, params):
        """The AdamW these settings train with (lr, betas, weight decay, gradient clipping)."""
        return AdamW(params, lr=self.lr, betas=(self.beta1, self.beta2), weight_decay=self.weight_decay,
                     max_grad_norm=self.grad_clip or None)

    def validate(self):
        """Raise ConfigError naming the first impossible setting."""
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "grad_accum"):
            v = getattr(self, name)
            need(_int(v) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        for name in ("seed", "warmup_iters", "sample_chars"):
            v = getattr(self, name)
            need(_int(v) and v >= 0, f"{name} must be a non-negative integer, got {v!r}")
        for name in ("data", "out"):
            v = getattr(self, name)
            need(v is None or isinstance(v, str), f"{name} must be a path, got {v!r}")
        need(isinstance(self.device, str), f"device must be a name, got {self.device!r}")
        need(_finite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        need(self.min_lr is None or (_finite(self.min_lr) and 0 <= self.min_lr <= self.lr),
             f"min_lr must be in [0, lr = {self.lr}], got {self.min_lr!r}")
        need(self.lr_schedule in SCHEDULES,
             f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        need(_finite(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            need(_finite(v) and 0 <= v < 1, f"{name} must be in [0, 1), got {v!r}")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        try:
            self.model_config(vocab_size=1).validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self

    def check_batch_split(self, ranks=1):
        """Raise ConfigError unless each of `ranks` data-parallel ranks gets an equal share of the batch's rows and
        that share splits into grad_accum equal micro-batches (equal parts: the mean of their means is the mean)."""
        if self.batch_size % ranks:
            raise ConfigError(f"batch_size {self.batch_size} does not split evenly over {ranks} data-parallel ranks: "
                              f"use a multiple of {ranks} (the global batch is divided into equal parts)")
        rows = self.batch_size // ranks
        if rows % self.grad_accum:
            whose = f"batch_size {rows}" if ranks == 1 else f"each rank's {rows} rows of batch_size {self.batch_size}"
            raise ConfigError(f"{whose} do{'es' if ranks == 1 else ''} not split into {self.grad_accum} equal "
                              f"micro-batches (--grad-accum {self.grad_accum}): use a batch size that is a multiple "
                              f"of {ranks * self.grad_accum}")

    def lr_at(self, step):
        """Learning rate for the update that takes the model from `step` to step + 1."""
        if step < self.warmup_iters:
            return self.lr * (step + 1) / self.warmup_iters               # linear warmup
        if self.lr_schedule == "constant":
            return self.lr
        floor = self.lr / 10 if self.min_lr is None else self.min_lr
        span = max(1, self.max_iters - self.warmup_iters)
        progress = min(1.0, (step - self.warmup_iters) / span)
        return floor + 0.5 * (self.lr - floor) * (1 + math.cos(math.pi * progress))   # cosine from lr to floor


def setting_fields():
    """(name, dataclass field) of every setting, in setting_names() order: what cli.py makes its flags from."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            out += [(g.name, g) for g in dataclasses.fields(GPTConfig) if g.name in MODEL_SETTINGS]
        else:
            out.append((f.name, f))
    return out


def setting_names():
    return [name for name, _ in setting_fields()]


def make_config(preset=None, **overrides):
    """A TrainConfig from a preset (default "cpu") with settings overridden; validated."""
    preset = DEFAULT_PRESET if preset is None else preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return _build({**PRESETS[preset], **overrides, "preset": preset})


# settings added after checkpoints of format 1 were first written, with the value a run that predates them had
_SINCE_FORMAT_1 = {"grad_accum": 1}


def check_saved_settings(ckpt):
    """The training settings a checkpoint holds (its meta "train") must be exactly the settings, valid, and describe
    the checkpoint's model config: else CheckpointError (the checkpoint is at fault, not the user's flags), never a
    resume with a default in place of a lost setting."""
    saved = dict(ckpt.meta["train"])
    if ckpt.meta["format_version"] == 1:
        saved = {**_SINCE_FORMAT_1, **saved}
    known = setting_names()
    odd = [f"lacks {k}" for k in known if k not in saved] + [f"has an unknown {k!r}" for k in saved if k not in known]
    try:
        if odd:
            raise ConfigError(odd[0])
        if _build(saved).model_config(ckpt.config.vocab_size) != ckpt.config:
            raise ConfigError("they describe another model than its config")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {ckpt.path}: the training settings in {META_FILE} are invalid: "
                              f"{e}") from None


def resume_config(saved, preset, overrides, out):
    """The settings of a resumed run: the checkpoint's (`saved`, its meta "train") with `overrides`, which may
    change the training settings but not the model's shape or the seed."""
    if preset is not None and preset != saved.get("preset"):
        raise ConfigError(f"the run in {out} uses preset {saved.get('preset')!r}, not {preset!r}: "
                          "drop --preset to resume it")
    fixed = [k for k in MODEL_SETTINGS if k not in CHANGEABLE_ON_RESUME] + ["seed"]
    changed = [f"{k} (run: {saved.get(k)!r}, asked: {overrides[k]!r})" for k in fixed
               if k in overrides and overrides[k] != saved.get(k)]
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming the run in {out}")
    known = set(setting_names())
    return _build({k: v for k, v in {**saved, **overrides, "out": str(out)}.items() if k in known})


def _build(settings):
    tc = TrainConfig.from_flat(settings)
    if tc.out is None:
        tc.out = str(Path("runs") / tc.preset)
    return tc.validate()


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x):
    return isinstance(x, int) and not isinstance(x, bool)
