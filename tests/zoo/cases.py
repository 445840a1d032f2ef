"""The zoo's cases: sick trainers with the codes that count as right, and healthy ones that
must not be pruned at all. Each is a function ``(monitor, epochs) -> Outcome`` that builds
its model and data and trains as a user's loop would (torch is seeded by the runner)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sweeper.health import HealthMonitor
from sweeper.losses import classification_loss

from . import data as zd
from .loop import (
    Outcome,
    classify_eval,
    classify_loss,
    ctc_eval,
    ctc_loss,
    lm_eval,
    lm_loss,
    regression_eval,
    regression_loss,
    tag_eval,
    tag_loss,
    train,
)
from .models import (
    CNN,
    MLP,
    ConvLSTMCTC,
    GRUTagger,
    RowRNN,
    TCNTagger,
    TiedLM,
    TransformerClassifier,
    TransformerGRUCTC,
)

SICK_EPOCHS = 2  # a sick run must be caught within its first 2 epochs
HEALTHY_EPOCHS = 6

Trainer = Callable[[HealthMonitor | None, int], Outcome]


@dataclass(frozen=True)
class Case:
    """One zoo trainer. ``accepted``: the reason codes that count as right (empty: healthy,
    must not be pruned). ``learns``: the metric and the value a healthy run must reach (its
    evidence of health); ``quick``: part of the subset the default tests run."""

    name: str
    arch: str
    what: str
    trainer: Trainer
    accepted: tuple[str, ...] = ()
    learns: tuple[str, float] | None = None
    quick: bool = False

    @property
    def sick(self) -> bool:
        return bool(self.accepted)

    @property
    def epochs(self) -> int:
        return SICK_EPOCHS if self.sick else HEALTHY_EPOCHS


CASES: list[Case] = []


def case(name: str, arch: str, what: str, *, accepted: tuple[str, ...] = (), learns: tuple[str, float] | None = None,
         quick: bool = False) -> Callable[[Trainer], Trainer]:
    def register(fn: Trainer) -> Trainer:
        CASES.append(Case(name, arch, what, fn, accepted, learns, quick))
        return fn
    return register


def get_case(name: str) -> Case:
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"no zoo case {name!r}; cases: {', '.join(c.name for c in CASES)}")


EXPLODED = ("grad_explosion", "nonfinite_loss")
NO_SIGNAL = ("chance_plateau", "class_collapse")


def _mlp_digits(monitor: HealthMonitor | None, epochs: int, *, model: nn.Module | None = None,
                opt: Callable[[Any], torch.optim.Optimizer] | None = None, d: zd.Split | None = None,
                **kw: Any) -> Outcome:
    d = d or zd.digits()
    model = model or MLP()
    optimizer = (opt or (lambda p: torch.optim.Adam(p, lr=1e-3)))(model.parameters())
    kw.setdefault("loss_fn", classify_loss(d))
    kw.setdefault("evaluate", classify_eval(d))
    return train(model, optimizer, monitor, data=d, epochs=epochs, **kw)


# ====================================================================== sick: MLP


@case("mlp_sgd_lr_too_high", "mlp", "SGD at lr 20 without clipping", accepted=EXPLODED, quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=20.0))


@case("mlp_summed_loss_sgd", "mlp", "summed cross-entropy with an SGD lr meant for the mean (32x too large)",
      accepted=EXPLODED)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    return _mlp_digits(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                       loss_fn=classify_loss(d, reduction="sum"))


@case("mlp_encoder_under_no_grad", "mlp", "the hidden layers run under torch.no_grad(); the optimizer holds them",
      accepted=("dead_gradients",), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(frozen_part=True))


@case("mlp_detached_features", "mlp", "features .detach()ed before the head", accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(detach_features=True))


@case("mlp_shuffled_labels", "mlp", "training labels shuffled apart from their images", accepted=NO_SIGNAL)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    shuffled = d.y[torch.randperm(len(d.y), generator=torch.Generator().manual_seed(5))]
    return _mlp_digits(monitor, epochs, loss_fn=classify_loss(d, targets=shuffled))


@case("mlp_inputs_cast_to_int", "mlp", "pixels scaled to [0, 1) then cast to int: every input is 0",
      accepted=(*NO_SIGNAL, "dead_gradients"), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    zeroed = zd.Split((d.x * 16 / 17).long().float(), d.y, (d.vx * 16 / 17).long().float(), d.vy)
    return _mlp_digits(monitor, epochs, d=zeroed)


@case("mlp_model_rebuilt_after_optimizer", "mlp", "the model is built again after its optimizer was created",
      accepted=("stalled_updates",), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    first = MLP()
    optimizer = torch.optim.Adam(first.parameters(), lr=1e-3)
    model = MLP()  # e.g. rebuilt to move it to a device or change a layer
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d))


@case("mlp_lambda_lr_floor_division", "mlp", "LambdaLR(lambda s: 0.95 ** s // 1): lr 0 after the first step",
      accepted=("stalled_updates",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    model = MLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.95 ** s // 1)
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d), scheduler=schedule)


@case("mlp_steplr_stepped_per_batch", "mlp", "StepLR(step_size=1, gamma=0.1) stepped every batch, not every epoch",
      accepted=("stalled_updates", "vanishing_gradients"))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d), scheduler=schedule)


@case("mlp_dropout_one", "mlp", "Dropout(p=1.0) where a keep probability was meant", accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(dropout=1.0))


@case("mlp_zero_init", "mlp", "every weight initialised to zero (ReLU MLP)", accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(init_scale=0.0))


@case("mlp_rare_positives_lr_too_high", "mlp", "6% positives, Adam at lr 0.5: all negative",
      accepted=("class_collapse", "chance_plateau", "grad_explosion"), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.rare_positives()
    return _mlp_digits(monitor, epochs, model=MLP(classes=2), d=d, opt=lambda p: torch.optim.Adam(p, lr=0.5),
                       evaluate=classify_eval(d, f1=True))


@case("mlp_targets_all_negative", "mlp", "a label-parsing bug makes every training target 0 (6% positives)",
      accepted=("class_collapse", "chance_plateau"))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.rare_positives()
    return _mlp_digits(monitor, epochs, model=MLP(classes=2), d=d,
                       loss_fn=classify_loss(d, targets=torch.zeros_like(d.y)), evaluate=classify_eval(d, f1=True))


@case("mlp_loss_scaled_tiny_sgd", "mlp", "loss divided by 1e8 (a normalisation applied twice) under plain SGD",
      accepted=("vanishing_gradients", "stalled_updates"))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    return _mlp_digits(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=0.1),
                       loss_fn=classify_loss(d, scale=1e-8))


@case("mlp_missing_zero_grad", "mlp", "optimizer.zero_grad() never called: gradients pile up (SGD, momentum)",
      accepted=EXPLODED, quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), zero_grad=False)


@case("mlp_pairwise_sqrt_nan", "mlp", "a pairwise-distance term through sqrt(0): NaN gradients, finite loss",
      accepted=("nonfinite_loss",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    model = MLP()

    def loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        logits = m(d.x[idx])
        spread = (logits[:, None] - logits[None]).pow(2).sum(-1).sqrt().mean()  # the diagonal is sqrt(0)
        return nn.functional.cross_entropy(logits, d.y[idx]) - 0.01 * spread

    return _mlp_digits(monitor, epochs, model=model, loss_fn=loss)


@case("regression_summed_mse_sgd", "mlp", "summed MSE with SGD at a mean-loss lr", accepted=EXPLODED)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.regression()
    return _mlp_digits(monitor, epochs, model=MLP(classes=1), d=d, opt=lambda p: torch.optim.SGD(p, lr=0.01),
                       loss_fn=regression_loss(d, reduction="sum"), evaluate=regression_eval(d))


@case("regression_unscaled_targets_sgd", "mlp", "regression targets in thousandths left unscaled (x1000), SGD",
      accepted=EXPLODED)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.regression()
    return _mlp_digits(monitor, epochs, model=MLP(classes=1), d=d, opt=lambda p: torch.optim.SGD(p, lr=0.01),
                       loss_fn=regression_loss(d, target_scale=1000.0),
                       evaluate=regression_eval(d, target_scale=1000.0))


# ====================================================================== sick: CNN


def _cnn(monitor: HealthMonitor | None, epochs: int, *, model: nn.Module | None = None,
         opt: Callable[[Any], torch.optim.Optimizer] | None = None, **kw: Any) -> Outcome:
    d = zd.digits("image")
    model = model or CNN()
    optimizer = (opt or (lambda p: torch.optim.Adam(p, lr=2e-3)))(model.parameters())
    kw.setdefault("loss_fn", classify_loss(d))
    kw.setdefault("evaluate", classify_eval(d))
    return train(model, optimizer, monitor, data=d, epochs=epochs, **kw)


@case("cnn_sgd_lr_too_high", "cnn", "SGD at lr 50 without clipping", accepted=EXPLODED)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=50.0, momentum=0.9))


@case("cnn_convs_under_no_grad", "cnn", "the conv blocks run under torch.no_grad(); the optimizer holds them",
      accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, model=CNN(frozen_convs=True))


@case("cnn_amp_nan_gradients", "cnn", "fp16 autocast + GradScaler with a sqrt(0) distance term: every step skipped",
      accepted=("nonfinite_loss",), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("image")
    model = CNN()

    def loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        logits = m(d.x[idx]).float()
        spread = (logits[:, None] - logits[None]).pow(2).sum(-1).sqrt().mean()
        return nn.functional.cross_entropy(logits, d.y[idx]) - 0.01 * spread

    return _cnn(monitor, epochs, model=model, loss_fn=loss, scaler=torch.amp.GradScaler("cpu"),
                amp_dtype=torch.float16)


@case("cnn_head_replaced_after_optimizer", "cnn", "model.fc replaced (new class count) after the optimizer was built",
      accepted=("stalled_updates",), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("image")
    model = CNN(classes=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.fc = nn.Linear(model.fc.in_features, 10)
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d))


@case("cnn_labels_misaligned", "cnn", "images shuffled for augmentation, labels not", accepted=NO_SIGNAL)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("image")
    perm = torch.randperm(len(d.x), generator=torch.Generator().manual_seed(3))
    return _cnn(monitor, epochs, loss_fn=classify_loss(zd.Split(d.x[perm], d.y, d.vx, d.vy)))


# ====================================================================== sick: LSTM / GRU


@case("lstm_sgd_lr_too_high", "rnn", "LSTM, SGD at lr 30 without clipping", accepted=EXPLODED)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=RowRNN("lstm"), d=d, opt=lambda p: torch.optim.SGD(p, lr=30.0))


@case("gru_under_no_grad", "rnn", "the GRU runs under torch.no_grad(); the optimizer holds it",
      accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=RowRNN("gru", frozen_rnn=True), d=d)


@case("lstm_labels_off_by_one", "rnn", "LSTM; an off-by-one join pairs each sequence with the previous label",
      accepted=NO_SIGNAL)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=RowRNN("lstm"), d=d, loss_fn=classify_loss(d, targets=d.y.roll(1)))


@case("gru_tagger_pooled_over_time", "rnn", "per-column tagger: the GRU's input is pooled over time and copied back",
      accepted=("temporal_collapse",), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips()
    model = GRUTagger(pool_before_gru=True)
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=tag_loss(d), evaluate=tag_eval(d))


# ====================================================================== sick: transformer


@case("transformer_lr_too_high", "transformer", "AdamW at lr 1.0, no warmup",
      accepted=(*EXPLODED, *NO_SIGNAL))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=TransformerClassifier(), d=d,
                       opt=lambda p: torch.optim.AdamW(p, lr=1.0))


@case("transformer_encoder_under_no_grad", "transformer", "the encoder runs under torch.no_grad()",
      accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=TransformerClassifier(frozen_encoder=True), d=d)


@case("transformer_inverted_padding_mask", "transformer", "a keep-mask passed as src_key_padding_mask: every key "
      "masked, attention passes nothing", accepted=("dead_gradients", "nonfinite_loss"))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=TransformerClassifier(invert_mask=True), d=d)


@case("transformer_gru_ctc_pooled", "ctc", "transformer encoder + GRU CTC: the encoder's output pooled over time "
      "and copied to every step", accepted=("temporal_collapse",), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips(1000)
    model = TransformerGRUCTC(pool_between=True)
    return train(model, torch.optim.AdamW(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=ctc_loss(d), evaluate=ctc_eval(d), clip=1.0, hand_norm=True)


@case("lm_lambda_lr_floor_division", "transformer", "tied-weight LM, LambdaLR(lambda s: 0.95 ** s // 1)",
      accepted=("stalled_updates",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.counting_sequences()
    model = TiedLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.95 ** s // 1)
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=lm_loss(d), evaluate=lm_eval(d),
                 scheduler=schedule)


@case("conv_lstm_ctc_pooled", "ctc", "a user's conv + LSTM CTC recognizer with global pooling before the LSTM",
      accepted=("temporal_collapse",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips(1000)
    model = ConvLSTMCTC(pool_before_lstm=True)
    return train(model, torch.optim.AdamW(model.parameters(), lr=1e-2), monitor, data=d, epochs=epochs,
                 loss_fn=ctc_loss(d), evaluate=ctc_eval(d), clip=1.0)


# ====================================================================== the built-in CTC task, as a sweep runs it


def _builtin_ctc(monitor: HealthMonitor | None, epochs: int, model_cls: type | None = None,
                 **changes: Any) -> Outcome:
    """``fit()`` on ctc_digits with the monitor a sweep builds (the task's detector options,
    metric and chance level); ``model_cls`` replaces the recognizer."""
    from sweeper.health import HealthPruned
    from sweeper.tasks import ctc_digits, get_task
    from sweeper.train import fit

    task = get_task("ctc_digits")
    config = {**task.defaults, "train_strips": 960, "val_strips": 160, "model_size": "small", "epochs": epochs,
              "seed": int(torch.initial_seed()) % 2**31, **changes}
    if monitor is not None:
        # (getattr: the zoo also measures older code, whose tasks declared their own detector options)
        monitor = HealthMonitor(detectors=getattr(task, "health_defaults", None), warmup_epochs=config["warmup_epochs"],
                                metric=task.metric, chance_metric=task.chance_metric)
    original = ctc_digits.CTCRecognizer
    if model_cls is not None:
        ctc_digits.CTCRecognizer = model_cls  # type: ignore[misc]
    out = Outcome()
    try:
        result = fit(config, task, monitor=monitor)
        out.history = result.history
    except HealthPruned as e:
        steps = -(-config["train_strips"] // config["batch_size"])
        out.verdict = e.verdict
        out.verdict_epoch = e.verdict.epoch if e.verdict.epoch is not None else e.verdict.step // steps
    finally:
        ctc_digits.CTCRecognizer = original  # type: ignore[misc]
    return out


@case("ctc_builtin_downsample_16", "ctc", "ctc_digits at 16x downsampling: fewer frames than labels",
      accepted=("ctc_infeasible",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _builtin_ctc(monitor, epochs, downsample=16)


@case("ctc_builtin_frontend_under_no_grad", "ctc", "ctc_digits with its conv front end under torch.no_grad()",
      accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    from tests.sick_models import NoGradEncoder

    return _builtin_ctc(monitor, epochs, NoGradEncoder)


@case("ctc_builtin_pooled_before_lstm", "ctc", "ctc_digits with global pooling before its LSTM",
      accepted=("temporal_collapse",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    from tests.sick_models import GlobalPoolBeforeLSTM

    return _builtin_ctc(monitor, epochs, GlobalPoolBeforeLSTM)


@case("ctc_builtin_lr_10_no_clip", "ctc", "ctc_digits at lr 10 without clipping or warmup", accepted=EXPLODED)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _builtin_ctc(monitor, epochs, lr=10.0, clip_norm=None, warmup_epochs=0)


# ====================================================================== healthy


@case("mlp_adam", "mlp", "plain MLP, Adam, mean cross-entropy", learns=("accuracy", 0.85), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs)


@case("mlp_summed_loss_raw_pixels_adam", "mlp", "summed cross-entropy on raw 0-255 pixels under Adam "
      "(gradient norms ~1e4-1e5)", learns=("accuracy", 0.9), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    raw = zd.Split(d.x * 255, d.y, d.vx * 255, d.vy)
    return _mlp_digits(monitor, epochs, model=MLP(width=256), d=raw, loss_fn=classify_loss(raw, reduction="sum"),
                       batch_size=128)


@case("mlp_sgd_momentum", "mlp", "SGD with momentum, mean loss", learns=("accuracy", 0.9))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))


@case("mlp_small_init", "mlp", "weights initialised 100x smaller: the parameter norm grows tens of times",
      learns=("accuracy", 0.4), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(init_scale=0.01), opt=lambda p: torch.optim.Adam(p, lr=3e-3))


@case("mlp_rare_positives", "mlp", "6% positives: all negative for an epoch or two, then learns",
      learns=("f1", 0.5), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.rare_positives()
    return _mlp_digits(monitor, epochs, model=MLP(classes=2), d=d,
                       opt=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), evaluate=classify_eval(d, f1=True))


@case("transformer_rare_positives_focal_restarts", "transformer",
      "6% positives, focal loss, AdamW at lr 3e-2 with warm restarts every 3 epochs: for an evaluation or two "
      "after a restart it calls nothing positive while its outputs still rank the positives", learns=("f1", 0.4))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    flat = zd.rare_positives()
    d = zd.Split(flat.x.reshape(-1, 8, 8), flat.y, flat.vx.reshape(-1, 8, 8), flat.vy)

    def focal(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return classification_loss("focal", model(d.x[idx]), d.y[idx])

    model = TransformerClassifier(classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    restarts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3 * (len(d.x) // 32))
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=focal, evaluate=classify_eval(d, f1=True),
                 scheduler=restarts)


@case("mlp_label_smoothing", "mlp", "cross-entropy with label smoothing 0.2", learns=("accuracy", 0.9))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    return _mlp_digits(monitor, epochs, loss_fn=classify_loss(d, label_smoothing=0.2))


@case("mlp_class_weighted_rare_positives", "mlp", "class-weighted loss on 6% positives (validation loss uncalibrated)",
      learns=("f1", 0.5))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.rare_positives()
    return _mlp_digits(monitor, epochs, model=MLP(classes=2), d=d,
                       loss_fn=classify_loss(d, weight=torch.tensor([1.0, 15.0])), evaluate=classify_eval(d, f1=True))


@case("mlp_gradient_accumulation", "mlp", "gradients accumulated over 4 batches per step", learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, accumulate=4, batch_size=16)


@case("mlp_loss_scaled_tiny_adam", "mlp", "loss divided by 1e5 under Adam (which ignores the scale)",
      learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    return _mlp_digits(monitor, epochs, loss_fn=classify_loss(d, scale=1e-5))


@case("regression_summed_mse_adam", "mlp", "summed MSE regression under Adam", learns=("mse", 5.0))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.regression()
    return _mlp_digits(monitor, epochs, model=MLP(classes=1), d=d, loss_fn=regression_loss(d, reduction="sum"),
                       evaluate=regression_eval(d))


@case("mlp_sgd_slow_start", "mlp", "SGD at a small lr: at chance accuracy for up to 4 epochs, its validation loss "
      "creeping down", learns=("loss", 2.29))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=0.01))


@case("mlp_left_in_eval_mode", "mlp", "model.train() never called again after the first evaluation (dropout off)",
      learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(dropout=0.2), train_mode=lambda epoch: epoch == 0)


@case("mlp_bf16_autocast", "mlp", "bfloat16 autocast, no scaler", learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, amp_dtype=torch.bfloat16)


@case("cnn_amp_gradscaler", "cnn", "fp16 autocast + GradScaler at its default scale; optimizer and scaler handed",
      learns=("accuracy", 0.85), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, scaler=torch.amp.GradScaler("cpu"), amp_dtype=torch.float16)


@case("mlp_amp_summed_loss_raw_pixels", "mlp", "fp16 autocast + GradScaler on a summed loss over raw pixels: the "
      "scaler skips overflowing steps while it calibrates", learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits()
    raw = zd.Split(d.x * 255, d.y, d.vx * 255, d.vy)
    return _mlp_digits(monitor, epochs, d=raw, loss_fn=classify_loss(raw, reduction="sum"),
                       scaler=torch.amp.GradScaler("cpu"), amp_dtype=torch.float16)


@case("cnn_amp_accumulation", "cnn", "fp16 autocast + GradScaler with gradients accumulated over 4 batches",
      learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, scaler=torch.amp.GradScaler("cpu"), amp_dtype=torch.float16, accumulate=4,
                batch_size=16)


@case("cnn_amp_gradscaler_nothing_handed", "cnn", "fp16 autocast + GradScaler; only the model handed",
      learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, scaler=torch.amp.GradScaler("cpu"), amp_dtype=torch.float16, hand_optimizer=False)


@case("cnn_batchnorm_sgd", "cnn", "BatchNorm CNN, SGD with momentum, clipped (pre-clip norm handed)",
      learns=("accuracy", 0.8))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, opt=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), clip=1.0, hand_norm=True)


@case("cnn_frozen_backbone", "cnn", "convs frozen on purpose (requires_grad_(False)); the head learns",
      learns=("accuracy", 0.5))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    model = CNN()
    model.convs.requires_grad_(False)
    return _cnn(monitor, epochs, model=model, opt=lambda p: torch.optim.Adam([q for q in p if q.requires_grad], 1e-2))


@case("cnn_features_under_no_grad_head_only", "cnn", "convs under torch.no_grad() on purpose, the optimizer holds "
      "only the head", learns=("accuracy", 0.5))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("image")
    model = CNN(frozen_convs=True)
    return train(model, torch.optim.Adam(model.fc.parameters(), lr=1e-2), monitor, data=d, epochs=epochs,
                 loss_fn=classify_loss(d), evaluate=classify_eval(d))


@case("cnn_gradual_unfreeze", "cnn", "convs frozen for the first epoch, unfrozen after (the optimizer holds all)",
      learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    model = CNN()
    model.convs.requires_grad_(False)
    return _cnn(monitor, epochs, model=model, at_epoch=lambda e: model.convs.requires_grad_(e >= 1))


@case("lstm_clipped", "rnn", "LSTM, Adam, clipping at 1 with the pre-clip norm handed", learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=RowRNN("lstm"), d=d, opt=lambda p: torch.optim.Adam(p, lr=3e-3),
                       clip=1.0, hand_norm=True)


@case("gru_sgd_summed_loss_clipped", "rnn", "GRU, SGD on a summed loss, clipped at 5", learns=("accuracy", 0.8))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=RowRNN("gru"), d=d,
                       opt=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                       loss_fn=classify_loss(d, reduction="sum"), clip=5.0, hand_norm=True)


@case("gru_tagger", "rnn", "per-column tagger (conv + bidirectional GRU)", learns=("accuracy", 0.7), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips()
    model = GRUTagger()
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=tag_loss(d), evaluate=tag_eval(d))


@case("transformer_warmup_cosine", "transformer", "AdamW, linear warmup then cosine decay", learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    model = TransformerClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    total = epochs * (len(d.x) // 32)
    schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, total_iters=40),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total - 40)], milestones=[40])
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d), scheduler=schedule)


@case("transformer_onecycle_high_peak", "transformer", "OneCycleLR to a high peak (lr 1e-2): a loss spike mid-warmup",
      learns=("accuracy", 0.7))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    model = TransformerClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=epochs * (len(d.x) // 32))
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d), scheduler=schedule)


@case("lm_tied_weights", "transformer", "causal LM with tied input/output embeddings", learns=("accuracy", 0.6),
      quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.counting_sequences()
    model = TiedLM()
    return train(model, torch.optim.AdamW(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=lm_loss(d), evaluate=lm_eval(d))


@case("transformer_gru_ctc", "ctc", "conv front end + transformer encoder + GRU, CTC (all blanks for 3 epochs)",
      learns=("wer", 0.6), quick=True)
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips(1000)
    model = TransformerGRUCTC()
    return train(model, torch.optim.AdamW(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=ctc_loss(d), evaluate=ctc_eval(d), clip=1.0, hand_norm=True)


@case("ctc_builtin_default", "ctc", "ctc_digits with its defaults (all blanks for its first epochs)",
      learns=("wer", 0.9))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _builtin_ctc(monitor, epochs)


@case("conv_lstm_ctc", "ctc", "a user's conv + LSTM CTC recognizer, AdamW at lr 1e-2, clipped (norm not handed)",
      learns=("wer", 0.6))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips(1000)
    model = ConvLSTMCTC()
    return train(model, torch.optim.AdamW(model.parameters(), lr=1e-2), monitor, data=d, epochs=epochs,
                 loss_fn=ctc_loss(d), evaluate=ctc_eval(d), clip=1.0)


# ====================================================================== held out: written after the detectors changed,
# run once before any further change (the README reports how they first fared)


@case("cnn_adam_lr_1", "cnn", "Adam at lr 1.0 on a BatchNorm CNN: poor but learning (written as a sick case; "
      "unmonitored it reaches 0.80 accuracy, so it is a healthy one)", learns=("accuracy", 0.6))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, opt=lambda p: torch.optim.Adam(p, lr=1.0))


@case("gru_lambda_lr_zero", "rnn", "GRU, LambdaLR(lambda step: 0): a schedule that never starts",
      accepted=("stalled_updates",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    model = RowRNN("gru")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.0)
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d), scheduler=schedule)


@case("regression_nan_target", "mlp", "one NaN in the regression targets (a missing value)",
      accepted=("nonfinite_loss",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.regression()
    y = d.y.clone()
    y[17] = float("nan")
    broken = zd.Split(d.x, y, d.vx, d.vy)
    return _mlp_digits(monitor, epochs, model=MLP(classes=1), d=broken, loss_fn=regression_loss(broken),
                       evaluate=regression_eval(broken))


@case("cnn_normalised_by_zero_std", "cnn", "per-pixel standardisation divides the always-blank corner pixels by 0",
      accepted=("nonfinite_loss",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("image")
    mean, std = d.x.mean(0, keepdim=True), d.x.std(0, keepdim=True)
    normed = zd.Split((d.x - mean) / std, d.y, (d.vx - mean) / std, d.vy)
    return _cnn(monitor, epochs, loss_fn=classify_loss(normed), evaluate=classify_eval(normed))


@case("cnn_unfrozen_but_not_in_optimizer", "cnn", "convs frozen, the optimizer built over the trainable part, "
      "convs unfrozen at epoch 1 without adding them", accepted=("stalled_updates",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("image")
    model = CNN()
    model.convs.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d), at_epoch=lambda e: model.convs.requires_grad_(e >= 1))


@case("gru_tagger_under_no_grad", "rnn", "per-column tagger with its GRU under torch.no_grad()",
      accepted=("dead_gradients",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips()
    model = GRUTagger()

    class Frozen(nn.Module):  # the GRU called under no_grad
        def __init__(self, gru: nn.Module) -> None:
            super().__init__()
            self.gru = gru

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
            with torch.no_grad():
                return self.gru(h)

    model.gru = Frozen(model.gru)  # type: ignore[assignment]
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=tag_loss(d), evaluate=tag_eval(d))


@case("lm_lr_too_high", "transformer", "tied-weight LM, SGD at lr 50", accepted=(*EXPLODED, *NO_SIGNAL))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.counting_sequences()
    model = TiedLM()
    return train(model, torch.optim.SGD(model.parameters(), lr=50.0), monitor, data=d, epochs=epochs,
                 loss_fn=lm_loss(d), evaluate=lm_eval(d))


@case("binary_bce_labels_all_one", "mlp", "single-logit BCE; a parsing bug makes every training label 1",
      accepted=("class_collapse", "chance_plateau"))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.small_digits()
    model = MLP(classes=1)

    def loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(m(d.x[idx]).squeeze(-1), torch.ones(len(idx)))

    return _mlp_digits(monitor, epochs, model=model, d=d, loss_fn=loss, evaluate=_bce_eval(d))


def _bce_eval(d: zd.Split) -> Any:
    def evaluate(model: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        logit = model(d.vx).squeeze(-1)
        loss = float(nn.functional.binary_cross_entropy_with_logits(logit, d.vy.float()))
        return {"loss": loss, "accuracy": float(((logit > 0).long() == d.vy).float().mean())}, \
            {"logits": logit, "targets": d.vy}
    return evaluate


@case("binary_bce", "mlp", "single-logit BCE: is the digit below 5?", learns=("accuracy", 0.9))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.small_digits()
    model = MLP(classes=1)

    def loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(m(d.x[idx]).squeeze(-1), d.y[idx].float())

    return _mlp_digits(monitor, epochs, model=model, d=d, loss_fn=loss, evaluate=_bce_eval(d))


@case("cnn_adam_lr_1e-2", "cnn", "Adam at a high but workable lr 1e-2", learns=("accuracy", 0.8))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _cnn(monitor, epochs, opt=lambda p: torch.optim.Adam(p, lr=1e-2))


@case("mlp_tanh_xavier_sgd", "mlp", "tanh MLP, Xavier init, SGD without momentum at lr 0.5", learns=("accuracy", 0.85))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    model = MLP()
    for i, layer in enumerate(model.body):
        if isinstance(layer, nn.ReLU):
            model.body[i] = nn.Tanh()
        elif isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
    return _mlp_digits(monitor, epochs, model=model, opt=lambda p: torch.optim.SGD(p, lr=0.5))


@case("regression_gaussian_nll", "mlp", "Gaussian negative log-likelihood (a loss that goes below 0)",
      learns=("mse", 7.0))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.regression()
    model = MLP(classes=2)

    def loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        mean, log_var = m(d.x[idx]).unbind(-1)
        return nn.functional.gaussian_nll_loss(mean, d.y[idx], log_var.exp())

    def evaluate(m: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        mean, log_var = m(d.vx).unbind(-1)
        return {"loss": float(nn.functional.gaussian_nll_loss(mean, d.vy, log_var.exp())),
                "mse": float(nn.functional.mse_loss(mean, d.vy))}, {}

    return _mlp_digits(monitor, epochs, model=model, d=d, loss_fn=loss, evaluate=evaluate)


@case("mlp_fine_tune_from_trained", "mlp", "fine-tuning a model already trained for 4 epochs (a low starting loss)",
      learns=("accuracy", 0.9))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    model = MLP()
    _mlp_digits(None, 4, model=model)  # the "pretrained" model
    return _mlp_digits(monitor, epochs, model=model, opt=lambda p: torch.optim.Adam(p, lr=3e-4))


@case("lstm_adamw_weight_decay", "rnn", "LSTM, AdamW with weight decay 0.1, cosine warm restarts every 40 steps",
      learns=("accuracy", 0.8))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    model = RowRNN("lstm")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=40)
    return train(model, optimizer, monitor, data=d, epochs=epochs, loss_fn=classify_loss(d),
                 evaluate=classify_eval(d), scheduler=schedule)


@case("transformer_label_smoothing_tight_clip", "transformer", "transformer, label smoothing 0.1, clipped at 0.1",
      learns=("accuracy", 0.8))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.digits("rows")
    return _mlp_digits(monitor, epochs, model=TransformerClassifier(), d=d,
                       opt=lambda p: torch.optim.AdamW(p, lr=3e-3), loss_fn=classify_loss(d, label_smoothing=0.1),
                       clip=0.1, hand_norm=True)


@case("tcn_tagger", "cnn", "a temporal convolutional tagger (stacked dilated Conv1d)", learns=("accuracy", 0.65))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips()
    model = TCNTagger()
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=tag_loss(d), evaluate=tag_eval(d))


@case("tcn_tagger_pooled", "cnn", "the TCN tagger with its first block's output averaged over time",
      accepted=("temporal_collapse",))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    d = zd.strips()
    model = TCNTagger(pool_after_first=True)
    return train(model, torch.optim.Adam(model.parameters(), lr=3e-3), monitor, data=d, epochs=epochs,
                 loss_fn=tag_loss(d), evaluate=tag_eval(d))


def _noisy_small_digits() -> zd.Split:
    d = zd.small_digits()
    g = torch.Generator().manual_seed(7)

    def flip(y: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.rand(len(y), generator=g) < 0.4, 1 - y, y)

    return zd.Split(d.x, flip(d.y), d.vx, flip(d.vy))


@case("mlp_low_signal_noisy_labels", "mlp", "is the digit below 5, with 40% of all labels flipped: a weak but real "
      "signal (the best accuracy is 0.6)", learns=("accuracy", 0.52))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(classes=2), d=_noisy_small_digits(),
                       opt=lambda p: torch.optim.Adam(p, lr=1e-3))


@case("mlp_low_signal_slow", "mlp", "the same weak signal learned slowly (Adam at lr 3e-4): within the noise of "
      "chance for its first epochs", learns=("loss", 0.693))
def _(monitor: HealthMonitor | None, epochs: int) -> Outcome:
    return _mlp_digits(monitor, epochs, model=MLP(classes=2), d=_noisy_small_digits(),
                       opt=lambda p: torch.optim.Adam(p, lr=3e-4))
