"""Typed configuration: one pydantic model for the whole of `params.yaml`, one section per stage.

The model is validated once, at the door (the CLI, or the Prefect server for a UI run), and each
stage receives only its own section. Unknown keys, wrong types and out-of-range values are refused
with the key, the value and what is allowed. Defaults here are the built-in default run.

The JSON schema of these classes is also the Prefect run form (`_run_form`: titles, order, both
ends of each bound); descriptions are plain words, for the form.

Longer than 400 lines: it is params.yaml's schema, one class per section in the file's order,
each key with the description the Prefect run form shows; split, one document would be read
across files.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

DATA_SOURCE = re.compile(r"^(digits|npz:.+|images:.+|tfrecord:.+)$")
UNLABELED_SOURCE = re.compile(r"^(npz:.+|images:.+|tfrecord:.+)$")

# an error whose value is not repeated (flows/workspace/params.py)
CREDENTIALS_IN_URL = "credentials_in_url"


def _no_password(url: str | None) -> str | None:
    """Refuse `scheme://user:password@host`: secrets come from the environment, never from
    params.yaml (which DVC, git and MLflow all record)."""
    if url and urlsplit(url).password is not None:
        raise PydanticCustomError(
            CREDENTIALS_IN_URL,
            "holds a password; remove it: credentials come from the environment (PGPASSWORD, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD)",
        )
    return url


SecretFreeUrl = Annotated[str, AfterValidator(_no_password)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
# data.val_fraction `auto`: 10 % of the training data, raised to 400 samples while that is at most
# 30 % of it. Choosing a student (distill.width auto, the search) from its paired counts on
# validation needs a few samples per point of the gate's default 1-point budget: on 144 (10 % of
# digits), one worse sample more than better puts a student's chance to pass the gate at 0.67
# (refused at 0.8, tasks/power.py); on 400, 2 worse and 1 better give 0.86. Measured on digits,
# seeds 1-5 (docs/benchmarks.md): median gzip ratio 40x at 144 samples, 138x at 400.
VAL_LEAST, VAL_SAMPLES, VAL_MOST = 0.1, 400, 0.3
Confidence = Annotated[float, Field(gt=0, lt=1)]  # of a one-sided bound: 0.95 = 95 %
PositiveInt = Annotated[int, Field(ge=1)]
StudentInit = Literal["teacher", "random"]
StudentActivations = Literal["keep", "relu"]
StudentBlocks = Literal["auto", "all", "half", "fewest"]
StudentDownsample = Literal["auto", "keep", "early"]
QuantizeMode = Literal["int8", "int16x8", "dynamic", "float16", "mixed"]


def _unquoted_2_4(value: object) -> object:
    """YAML 1.1 (PyYAML: params.yaml, `--set`) reads an unquoted 2:4 as the base-60 number
    2 * 60 + 4 = 124; take it as the pattern it was meant to be."""
    return "2:4" if value == 2 * 60 + 4 else value


SparsityPattern = Annotated[Literal["unstructured", "2:4"], BeforeValidator(_unquoted_2_4)]


def _height_and_width(value: object) -> object:
    """One number is a square, as `--set data.image_size=224` means; any other form than two
    numbers is refused naming the one to give (pydantic's own says `valid tuple`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ValueError("give [height, width], e.g. [224, 224], or one number for a square")
    return value


ImageSize = Annotated[tuple[PositiveInt, PositiveInt] | None, BeforeValidator(_height_and_width)]
MOST_DROP = 0.2  # gate's and quantize's max_accuracy_drop: larger is a number of points meant


def _fraction_not_points(value: object) -> object:
    """A drop budget is a fraction: `1` would be 100 points, which no gate means (1 point was
    meant). Over MOST_DROP, it is refused naming the fraction to write."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MOST_DROP:
        meant = (f"; for {value:g} point{'s' * (value != 1)} write {value / 100:g}"
                 if value <= 100 * MOST_DROP else "")
        raise ValueError(f"that is {100 * value:g} points: the budget is a fraction (0.01 = 1 "
                         f"point){meant}; at most {MOST_DROP:g} ({100 * MOST_DROP:g} points)")
    return value


DropBudget = Annotated[float, Field(ge=0, le=MOST_DROP), BeforeValidator(_fraction_not_points)]


def _run_form(schema: dict[str, Any], section: type[Section]) -> None:
    """A section as Prefect's run form shows it (its JSON schema only: pydantic validates as ever).
    Each key titled by its `title`, else by itself in words (`learning rate`), and listed as
    required: the form says `(Optional)` of every key that is not, and each is prefilled anyway
    (a flow run made through Prefect's API must give every key: its server checks this schema).
    Ordered by `position`, which the form sorts on: `form_first`, then the class's order."""
    keys = schema["properties"]
    order = [*section.form_first, *(key for key in keys if key not in section.form_first)]
    for key, shown in keys.items():
        shown["title"] = section.model_fields[key].title or key.replace("_", " ")
        shown["position"] = order.index(key)
        _form_bounds(shown)
    schema["required"] = list(keys)


# The tabs of an `a | b` key in the run form: Prefect names them by Python type (`str`, `None`).
FORM_CHOICES = {"null": "none", "string": "text", "number": "number", "integer": "number",
                "array": "list"}


def _form_bounds(shown: dict[str, Any]) -> None:
    """The form's number inputs take `minimum`/`maximum` only: an exclusive bound gets its
    inclusive twin too (the bound itself is still refused, on submit). The choices of an `a | b`
    key are named by their constant (`auto`), else by `FORM_CHOICES`; items alike."""
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in shown:
            shown.setdefault(inclusive, shown[exclusive])
    for choice in shown.get("anyOf", ()):
        if (name := choice.get("const", FORM_CHOICES.get(choice.get("type")))) is not None:
            choice.setdefault("title", name)
        _form_bounds(choice)
    for item in (*([shown["items"]] if isinstance(shown.get("items"), dict) else ()),
                 *shown.get("prefixItems", ())):
        _form_bounds(item)


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment too."""

    # Numbers are accepted for text fields: `--set tracking.experiment=2024` means the name "2024".
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              json_schema_extra=_run_form)
    form_first: ClassVar[tuple[str, ...]] = ()  # the run form's first keys: the most changed


class Training(Section):
    """Optimiser settings shared by every stage that trains."""

    epochs: PositiveInt = Field(10, description="Passes over the training split.")
    batch_size: PositiveInt = Field(32, description="Samples per gradient step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")


class DataConfig(Section):
    source: str = Field(
        "digits",
        description="Where the samples come from: digits (built in); npz:PATH, a .npz file of "
        "x_train, y_train, x_test, y_test (and x_val, y_val) or of x, y; images:DIR, one "
        "sub-folder per class; tfrecord:PATH, a .tfrecord file or a folder of them "
        "(tf.train.Example records).",
    )
    test_fraction: Fraction = Field(0.2,
                                    description="Share held out for the test split (x, y data).")
    val_fraction: Fraction | Literal["auto"] = Field(
        "auto",
        description="Share of the rest kept for validation, or auto: 10 % of it, raised to "
        f"{VAL_SAMPLES} samples (up to {VAL_MOST:.0%}) on small data, as choosing a student "
        "needs a few validation samples per point of the gate's budget.",
    )
    val_from: Literal["auto", "train", "test"] = Field(
        "auto",
        description="Where the validation split comes from: train (carved from the training "
        "data), test (carved from the held-out samples, a third of them at most) or auto: train, "
        "unless a teacher given as a file remembers those samples (more accurate on them than on "
        "the test split, or fewer of its least sure answers among them than among inputs it never "
        "saw, beyond noise), then test. An x_val in the npz is kept.",
    )
    scale_uint8: bool = Field(True, description="Scale uint8 pixels to [0, 1].")
    image_size: ImageSize = Field(
        None, description="Resize images:DIR pictures to [height, width] (one number: a square, "
        "224 is [224, 224]); none: the first image's."
    )
    color_mode: Literal["grayscale", "rgb"] = Field("rgb", description="Channels for images:DIR.")
    cache_mb: int = Field(
        1024, ge=0, description="Images (folder, tfrecord) up to this size decoded (uint8) are held "
        "in memory; larger sets stream: decoded once per stage into a temporary file, read a "
        "batch at a time (0: always)."
    )
    record_input: str = Field("image", description="tfrecord: the feature holding the input: "
                              "encoded image bytes, or a float or int list of record_shape.")
    record_label: str = Field("label", description="tfrecord: the int64 feature of class ids.")
    record_shape: list[PositiveInt] | None = Field(
        None, description="tfrecord: a list input's sample shape, e.g. [28, 28, 1]."
    )
    unlabeled: str | None = Field(
        None,
        description="Inputs without labels, of the data's sample shape, where the teacher's answer "
        "is the reference: npz:PATH (an array x), images:DIR (a flat folder of images, decoded "
        "as for images:DIR data) or tfrecord:PATH (records holding record_input). Inputs equal "
        "to a training input are dropped; the rest split into a part that chooses and one that "
        "certifies (the gate: an accuracy drop bounded by the disagreement with the teacher, "
        "without labels). None: no pool.",
    )
    unlabeled_choose_fraction: Fraction = Field(
        0.5,
        description="Share of the unlabeled pool that may choose (the search, distill.width auto); "
        "the rest only certifies (the gate). No input does both.",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not DATA_SOURCE.match(value):
            raise ValueError("must be `digits`, `npz:PATH`, `images:DIR` or `tfrecord:PATH`")
        return value

    @field_validator("unlabeled")
    @classmethod
    def _known_unlabeled(cls, value: str | None) -> str | None:
        if value is not None and not UNLABELED_SOURCE.match(value):
            raise ValueError("must be `npz:PATH` (an array x), `images:DIR` (a flat folder of "
                             "images) or `tfrecord:PATH`, or null for no unlabeled pool")
        return value

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DataConfig:
        if self.test_fraction + self.val_share(0) >= 0.9:
            raise ValueError(
                f"test_fraction + val_fraction must be < 0.9 to leave data to train on, "
                f"got {self.test_fraction} + {self.val_fraction}"
            )
        return self

    def val_share(self, rest: int) -> float:
        """The share of `rest` samples kept for validation: val_fraction, `auto` resolved (for
        `rest` 0: the largest it can be)."""
        if self.val_fraction != "auto":
            return self.val_fraction
        return min(VAL_MOST, max(VAL_LEAST, VAL_SAMPLES / rest)) if rest else VAL_MOST


class ModelConfig(Training):
    form_first = ("source", "weights")

    source: str = Field(
        "train",
        description="The teacher: train (the built-in CNN, trained on the data here), a .keras "
        "or .h5 file (Keras 3 files are rebuilt in tf_keras), a SavedModel directory, or "
        "keras.applications.NAME.",
    )
    weights: str | None = Field(
        None, description="Local weights file for keras.applications; none: train it here."
    )
    task: Literal["auto", "classification", "multilabel"] = Field(
        "auto",
        description="What the teacher's outputs mean: auto (from its last activation and the "
        "labels), classification (a class per sample, judged by top-1 accuracy) or multilabel "
        "(a yes or no per label, judged by exact-match accuracy).",
    )
    epochs: PositiveInt = Field(15, description="Teacher training epochs (source: train).")
    trust_code: bool = Field(
        False,
        description="Allow Lambda layers and custom objects in model files (model.source, "
        "distill.student) to run their code when loaded (only for files you trust).",
    )


class SparsifyConfig(Training):
    form_first = ("enabled", "final_sparsity", "pattern")

    enabled: bool = Field(
        True, title="sparsify enabled",
        description="Magnitude pruning: of the student while distill trains it, and of the "
        "teacher itself when that model goes on (distill off, or distill.width 1.0).",
    )
    schedule: Literal["polynomial_decay", "constant"] = Field(
        "polynomial_decay", description="Sparsity schedule over the fine-tuning steps."
    )
    initial_sparsity: float = Field(0.5, ge=0, lt=1, description="Sparsity at the first step.")
    final_sparsity: float = Field(0.8, ge=0, lt=1, description="Sparsity reached at the end.")
    frequency: PositiveInt = Field(10, description="Steps between mask updates.")
    allocation: Literal["uniform", "size_aware"] = Field(
        "size_aware",
        description="Sparsity per layer: uniform, the target everywhere, or size_aware "
        "(Erdos-Renyi-Kernel: small layers such as the first conv and the classifier stay "
        "denser, the same zeros overall).",
    )
    pattern: SparsityPattern = Field(
        "unstructured",
        description="Where the zeros go: unstructured (anywhere, by magnitude, to the sparsity "
        "targets) or 2:4 (2 zeros in every 4 weights along a layer's input dimension, a fixed "
        "50 % per eligible layer; the targets, schedule and allocation do not apply).",
    )
    unsupported_layers: Literal["skip", "error"] = Field(
        "skip",
        description="Layers tfmot cannot prune (with 2:4, also those whose input dimension is "
        "not a multiple of 4): skip leaves them dense, error stops the run.",
    )
    epochs: PositiveInt = Field(4, description="Sparse fine-tuning epochs.")
    learning_rate: float = Field(5e-4, gt=0, le=1, description="Adam learning rate.")

    @model_validator(mode="after")
    def _sparsity_grows(self) -> SparsifyConfig:
        if self.schedule == "polynomial_decay" and self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity ({self.initial_sparsity}) must not exceed "
                f"final_sparsity ({self.final_sparsity})"
            )
        return self


class DistillConfig(Training):
    form_first = ("enabled", "width", "temperature", "alpha", "epochs")

    enabled: bool = Field(True, title="distill enabled",
                          description="Distill the dense teacher into the student.")
    width: Annotated[float, Field(gt=0, le=1)] | Literal["auto"] = Field(
        "auto",
        description="Student width vs teacher (1.0: the sparsified model), or auto: the "
        "smallest student of the teacher's widths (0.5 down by sqrt 2), each with each "
        "distill.blocks choice, likely to keep the gate's budget by its validation counts, found "
        "in about log2(rungs) + 1 probes (each the first third of a distillation; the chosen "
        "one trains on).",
    )
    init: StudentInit = Field(
        "teacher",
        description="Width-scaled student's weights: teacher (each layer keeps the teacher's "
        "channels with the largest L1 norms) or random (fresh initialisation).",
    )
    activations: StudentActivations = Field(
        "keep",
        description="A derived student's activations: keep the teacher's, or relu: swish (SiLU) "
        "and GELU become ReLU, which int8 fuses into the layer before (the layers that make the "
        "outputs keep theirs).",
    )
    blocks: StudentBlocks = Field(
        "auto",
        description="A derived student's residual blocks: all the teacher's; half: every other "
        "block whose shortcut is the identity is left out (its input passes on); fewest: every "
        "such block is left out (blocks that change shape always stay); auto: with distill.width "
        "auto, the smallest student likely to pass the gate among each width with each of the "
        "three, else all.",
    )
    downsample: StudentDownsample = Field(
        "auto",
        description="A derived student's strides: keep the teacher's; early: the stride of the "
        "downsampling after the stem's moves up to the first spatial convolution after the stem "
        "that every path passes through, so the layers between run on a quarter of the "
        "positions; auto: with distill.width auto, each rung with each of the two, else keep.",
    )
    student: str | None = Field(None, description="Student model file; overrides width.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softening of the soft targets.")
    alpha: float = Field(
        0.1, ge=0, le=1, description="Weight of the hard-label loss; 1 - alpha weighs the KD loss."
    )
    augment: Literal["none", "flip_crop", "mixup"] = Field(
        "none",
        description="Training views, the teacher's logits computed on each (consistent teaching): "
        "none; flip_crop (images: random left-right flip, shift by up to 1/8); mixup (each "
        "sample mixed with another of its batch, at least half itself).",
    )
    epochs: PositiveInt = Field(40, description="Distillation epochs.")
    learning_rate: float = Field(3e-3, gt=0, le=1, description="Adam learning rate.")


class QuantizeConfig(Section):
    enabled: bool = Field(True, title="quantize enabled",
                          description="Quantize in the mode below (off: an FP32 .tflite).")
    mode: QuantizeMode = Field(
        "int8",
        description="int8: full integer, int8 I/O; int16x8: int16 activations, int8 weights, "
        "int16 I/O (slow on x86); dynamic: int8 weights, float activations and I/O; float16: "
        "float16 weights, float I/O; mixed: per layer INT4/INT8 weights or float, chosen by "
        "measured sensitivity within max accuracy drop.",
    )
    calibration_samples: PositiveInt = Field(
        200, description="Real training samples used to calibrate activation ranges."
    )
    max_accuracy_drop: DropBudget = Field(
        0.01,
        description="mixed: largest validation-accuracy drop allowed vs the FP32 student, as a "
        "fraction (0.01: 1 point), at most 0.2.",
    )
    qat_epochs: Annotated[int, Field(ge=0)] = Field(
        0,
        description="Quantization-aware fine-tuning epochs before the INT8 conversion, on the "
        "distillation loss with the sparsity kept (0: off, post-training quantization only).",
    )
    qat_learning_rate: float = Field(
        1e-4, gt=0, le=1, description="Adam learning rate of the quantization-aware fine-tuning."
    )

    @property
    def effective_mode(self) -> str:
        """`mode`, or `fp32` when quantization is off."""
        return self.mode if self.enabled else "fp32"

    @property
    def needs_calibration(self) -> bool:
        return self.enabled and self.mode in ("int8", "int16x8", "mixed")

    @model_validator(mode="after")
    def _qat_needs_int8(self) -> QuantizeConfig:
        if self.qat_epochs and not (self.enabled and self.mode == "int8"):
            used = f"mode {self.mode}" if self.enabled else "enabled: false"
            raise ValueError(
                f"qat_epochs {self.qat_epochs} trains for the full-integer INT8 conversion, "
                f"but quantize has {used}; set quantize.qat_epochs: 0, or quantize.enabled: true "
                "with quantize.mode: int8"
            )
        return self


MAX_THREADS = 64


class EvaluateConfig(Section):
    latency_runs: Annotated[int, Field(ge=200)] = Field(
        300, description="Timed single-sample invokes per model (p50 and p90 reported)."
    )
    warmup_runs: Annotated[int, Field(ge=1)] = Field(30, description="Untimed invokes first.")
    threads: list[Annotated[int, Field(ge=1, le=MAX_THREADS)]] = Field(
        [1, 4], min_length=1,
        description="Interpreter thread counts to time (p50 and p90 at each); the first is the "
        "deployment's: the gate's and the search's faster, the speedup and the trials use it.",
    )

    @field_validator("threads")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) < len(value):
            raise ValueError("list each thread count once")
        return value


Width = Annotated[float, Field(gt=0, lt=1)]
Sparsity = Annotated[float, Field(ge=0, lt=1)]
Temperature = Annotated[float, Field(gt=0, le=100)]


class SearchConfig(Section):
    """The accuracy-aware search: which recipes to try and which one to keep (flows/search.py).
    The space's dimensions are lists of choices, each standing in for a stage's key in a trial
    (the description of Params.search, which the run form shows, names them)."""

    enabled: bool = Field(False, title="search enabled",
                          description="Search the recipe instead of using the one set here.")
    trials: PositiveInt = Field(30, description="Trials to run (a resumed search counts the done).")
    objective: Literal["smaller_gzip", "faster"] = Field(
        "smaller_gzip", description="Which point of the Pareto front within the drop is chosen."
    )
    require_feasible: bool = Field(
        False, description="No trial likely to pass the gate: fail the run (exit 1) instead of "
        "going on with the closest trial and promoting nothing.",
    )
    widths: list[Width] | None = Field(
        None, description="Student widths vs teacher; none: derived from the teacher, halvings by "
        "sqrt(2) from 0.5 down to keeping 4 units in all but the narrowest quarter of its layers.",
    )
    sparsities: list[Sparsity] = Field(
        [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95], description="Final sparsities to try."
    )
    patterns: list[SparsityPattern] = Field(["unstructured"], description="Sparsity patterns.")
    modes: list[QuantizeMode] = Field(
        ["int8", "dynamic", "float16", "mixed"],
        description="Quantization modes to try; by default every mode XNNPACK runs (int16x8 runs "
        "on LiteRT's built-in kernels, about 12x slower on x86: add it where 8-bit activations "
        "lose accuracy).",
    )
    temperatures: list[Temperature] | None = Field(
        None, description="Distillation temperatures; none: distill.temperature only."
    )
    activations: list[StudentActivations] | None = Field(
        None, description="distill.activations to try; none: keep and relu where the teacher has "
        "swish or GELU layers to replace, else distill.activations only.",
    )
    blocks: list[StudentBlocks] | None = Field(
        None, description="distill.blocks to try; none: all, half and fewest where the teacher "
        "has residual blocks with identity shortcuts, else all.",
    )
    downsample: list[StudentDownsample] | None = Field(
        None, description="distill.downsample to try; none: keep and early where the teacher has "
        "a stride to move, else keep.",
    )
    confirm_fraction: Fraction = Field(
        0.5, description="Share of the validation split kept from the sampler and the pruner, on "
        "which the chosen trial must confirm that it is likely to pass the gate.",
    )
    reduction_factor: Annotated[int, Field(ge=2)] = Field(
        3, description="Successive halving: past the epochs distill.width auto probes a student "
        "for (a third of distill.epochs), then factor times as many, a trial trains on only while "
        "it is in the best 1/factor of the trials measured there.",
    )
    dask_address: str | None = Field(
        None, description="Dask scheduler for the trials (tcp://HOST:PORT); none: a local cluster."
    )
    workers: PositiveInt | None = Field(
        None, description="Local cluster's worker processes (trials at once); none: CPU count."
    )
    timeout_minutes: float | None = Field(
        None, gt=0, description="Start no trial after this long; the running ones finish."
    )

    @field_validator("widths", "sparsities", "patterns", "modes", "temperatures", "activations",
                     "blocks", "downsample")
    @classmethod
    def _not_empty(cls, value: list | None) -> list | None:
        if value is not None and not value:
            raise ValueError("the search space needs at least one choice here; list one or more")
        return value


class TrackingConfig(Section):
    uri: SecretFreeUrl = Field(
        "sqlite:///mlflow.db",
        description="MLflow tracking URI: sqlite:///FILE, postgresql://USER@HOST:PORT/DB or an "
        "http(s) server (never ./mlruns; passwords from the environment, never in the URI).",
    )
    experiment: str = Field("shrinkflow", min_length=1, description="MLflow experiment name.")

    @field_validator("uri")
    @classmethod
    def _no_file_store(cls, value: str) -> str:
        if value.startswith("file:") or "://" not in value:
            raise ValueError(
                "MLflow 3 refuses file stores: use `sqlite:///mlflow.db` or an http(s) server URI"
            )
        return value


class GateConfig(Section):
    form_first = ("max_accuracy_drop", "require")

    registered_model: str = Field(
        "shrinkflow-int8", min_length=1, description="MLflow registered model for the INT8 model."
    )
    max_accuracy_drop: DropBudget = Field(
        0.01,
        description="The budget: the largest teacher-to-final accuracy drop a champion may "
        "have, on the test split, paired (its upper confidence bound or its point estimate: "
        "require), as a fraction (0.01: 1 point), at most 0.2: a larger one is refused as "
        "points meant.",
    )
    objective: Literal["smaller_gzip", "faster", "more_accurate"] = Field(
        "smaller_gzip",
        description="How a new model must beat the champion: smaller_gzip, a smaller gzip size; "
        "faster, a lower latency beyond noise (timed interleaved with the champion) (both unless "
        "the champion is more accurate beyond noise, paired on the test split); more_accurate, a "
        "higher accuracy (ties: the smaller gzip).",
    )
    confidence: Confidence = Field(
        0.95,
        description="Confidence of the paired bounds the gate compares: the teacher bound within "
        "max_accuracy_drop, and the champion better beyond noise.",
    )
    max_slowdown: float = Field(
        1.0, gt=0,
        description="The speed floor: a model slower than the teacher, or than the champion, by "
        "more than this factor beyond noise (its latency at evaluate.threads[0], timed "
        "interleaved with theirs; lower bound at gate.confidence) is not promoted; 1.0: never "
        "slower; raise it where only bytes count. The search holds its trials to it.",
    )
    require: Literal["auto", "certified", "estimate"] = Field(
        "auto",
        description="The evidence a promotion needs: certified (the upper confidence bound of "
        "the drop within max_accuracy_drop, on the test labels or, with data.unlabeled, on the "
        "disagreement with the teacher); estimate (the point estimate within it; the bounds are "
        "still measured and shown); auto: certified when the test split (and pool) can certify "
        "a student as accurate as the teacher with probability 0.8, else estimate, said at the "
        "start of the run.",
    )


class Params(Section):
    """Everything a pipeline run needs: the contents of params.yaml."""

    # The run form: what to compress, on what data, to which budget, searched or not, first.
    form_first = ("model", "data", "gate", "search", "distill", "sparsify", "quantize")

    seed: Annotated[int, Field(ge=0)] = Field(42, description="Seed for splits, init and shuffles.")
    data: DataConfig = Field(
        default_factory=DataConfig,
        description="The samples: where they come from, the test and validation splits, and "
        "inputs without labels.")
    model: ModelConfig = Field(default_factory=ModelConfig,
                               description="The teacher: the model to compress.")
    sparsify: SparsifyConfig = Field(default_factory=SparsifyConfig,
                                     description="Magnitude pruning while training.")
    distill: DistillConfig = Field(
        default_factory=DistillConfig,
        description="Knowledge distillation of the teacher into a smaller student.")
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig,
                                     description="The conversion to TFLite: INT8 by default.")
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig,
        description="How each candidate is timed (accuracy: on the test split).")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig,
                                     description="Where MLflow records the runs.")
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="When a new model becomes the registry's champion: the accuracy budget and "
        "the evidence it needs.")
    search: SearchConfig = Field(
        default_factory=SearchConfig,
        description="The search for the recipe: each trial tries one choice of each list in "
        "place of its stage's key (widths: distill.width, sparsities: sparsify.final_sparsity, "
        "patterns: sparsify.pattern, modes: quantize.mode, temperatures: distill.temperature; "
        "activations, blocks and downsample: distill's).")

    @model_validator(mode="after")
    def _search_keeps_qat_int8(self) -> Params:
        """A trial sets quantize.mode to each of search.modes, and QAT trains for int8 only
        (`QuantizeConfig._qat_needs_int8`): any other mode would fail every trial that tries it."""
        others = [mode for mode in self.search.modes if mode != "int8"]
        if self.search.enabled and self.quantize.qat_epochs and others:
            raise ValueError(
                f"quantize.qat_epochs {self.quantize.qat_epochs} trains for the full-integer INT8 "
                f"conversion, but search.modes also tries {', '.join(others)}; set search.modes: "
                "[int8], or quantize.qat_epochs: 0"
            )
        return self

    @property
    def prunes_teacher(self) -> bool:
        """Whether the sparsify stage fine-tunes the teacher sparse: only when that model goes on
        (distill off, or distill.width 1.0 distills it). A derived student or a distill.student
        file starts from the dense teacher and is pruned while it learns, so a sparse teacher
        would only add a row to the evaluation (11 of a ResNet50 run's minutes)."""
        d = self.distill
        return self.sparsify.enabled and (not d.enabled or (d.width == 1.0 and not d.student))

    def __str__(self) -> str:
        s, d, q = self.sparsify, self.distill, self.quantize
        sparsify = "2:4" if s.pattern == "2:4" else f"{s.initial_sparsity:g}->{s.final_sparsity:g}"
        distill = f"width {d.width} T={d.temperature:g}" if d.enabled else "off"
        quantize = q.effective_mode + (f"+qat{q.qat_epochs}" * bool(q.qat_epochs))
        return (
            f"data={self.data.source} model={self.model.source} "
            f"sparsify={sparsify if s.enabled else 'off'} distill={distill} quantize={quantize} "
            f"seed={self.seed}"
        )
