"""Training settings: the presets, TrainConfig and its checks, the learning-rate schedule, resumed runs' settings.

A preset fixes the model and the optimisation; any field can be overridden (CLI: --n-layer 6, --lr 6e-4, ...).
A resumed run takes its settings from its checkpoint: the training settings may change (max_iters, lr, ...), the
model's shape and the seed may not.
"""
import dataclasses
import math
from pathlib import Path

from .model import GPTConfig
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
ARCH_FIELDS = ("block_size", "n_embd", "n_head", "n_layer", "bias", "activation")   # fixed once a run exists
SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """Impossible settings or an unusable output directory; the message is one line meant for the user."""


@dataclasses.dataclass
class TrainConfig:
    preset: str = DEFAULT_PRESET
    data: str = None                   # corpus file; None: the packaged tiny Shakespeare
    out: str = None                    # run directory; None: runs/<preset>
    device: str = "cpu"
    seed: int = 1337
    # model
    batch_size: int = 16
    block_size: int = 64
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    dropout: float = 0.0
    bias: bool = True
    activation: str = "relu"
    # optimisation
    lr: float = 1e-3
    min_lr: float = None               # cosine floor; None: lr / 10
    lr_schedule: str = "constant"      # "constant" or "cosine" (both after a linear warmup of warmup_iters)
    warmup_iters: int = 0
    max_iters: int = 1000
    weight_decay: float = 0.01         # on every parameter, as the lecture's torch.optim.AdamW defaults
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0             # global gradient-norm clip; 0 disables
    grad_accum: int = 1                # micro-batches per optimizer step, batch_size / grad_accum rows each
    # evaluation and output
    eval_interval: int = 100
    eval_iters: int = 20               # batches per split per evaluation
    sample_chars: int = 500            # characters sampled at the end of the run; 0: none

    def model_config(self, vocab_size):
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_embd=self.n_embd,
                         n_head=self.n_head, n_layer=self.n_layer, dropout=self.dropout, bias=self.bias,
                         activation=self.activation)

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


def make_config(preset=None, **overrides):
    """A TrainConfig from a preset (default "cpu") with fields overridden; validated."""
    preset = DEFAULT_PRESET if preset is None else preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return _build({**PRESETS[preset], **overrides, "preset": preset})


# settings added after checkpoints of format 1 were first written, with the value a run that predates them had
_SINCE_FORMAT_1 = {"grad_accum": 1}


def check_saved_settings(ckpt):
    """The training settings a checkpoint holds (its meta "train") must be exactly TrainConfig's fields, valid, and
    describe the checkpoint's model config: else CheckpointError (the checkpoint is at fault, not the user's flags),
    never a resume with a default in place of a lost setting."""
    from .checkpoint import META_FILE, CheckpointError
    saved = dict(ckpt.meta["train"])
    if ckpt.meta["format_version"] == 1:
        saved = {**_SINCE_FORMAT_1, **saved}
    known = [f.name for f in dataclasses.fields(TrainConfig)]
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
    changed = [f"{k} (run: {saved.get(k)!r}, asked: {overrides[k]!r})" for k in ARCH_FIELDS + ("seed",)
               if k in overrides and overrides[k] != saved.get(k)]
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming the run in {out}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return _build({k: v for k, v in {**saved, **overrides, "out": str(out)}.items() if k in known})


def _build(fields):
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    tc = TrainConfig(**fields)
    if tc.out is None:
        tc.out = str(Path("runs") / tc.preset)
    return tc.validate()


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x):
    return isinstance(x, int) and not isinstance(x, bool)
