"""params.yaml -> typed, validated sections. A bad value is reported with its key, e.g.
``params.yaml: train.epochs: Input should be greater than or equal to 1``."""

from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import fields
from typing import Literal, get_type_hints

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from components.data.augment import AugmentSpec
from components.data.nifti_io import VolumeLimits
from components.data.phantoms import PhantomSpec
from components.machine import native_bf16
from components.metrics.promotion import PromotionRule
from components.models.calibration import PIXEL_MEDIAN, Scoring
from components.models.registry import DETECTORS, accepted_hyperparams
from components.monitoring.drift import DriftSettings
from components.pacs.watch import WatchSettings
from components.preprocess.presets import preset
from components.preprocess.spec import PreprocessSpec
from components.validation.gate import DataRules


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LayoutName = Literal["auto", "hcp", "ixi", "bids", "brats", "brats2023", "plain"]


class DataParams(Section):
    healthy_root: Path
    healthy_layout: LayoutName = "auto"
    tumour_root: Path
    tumour_layout: LayoutName = "auto"
    modality: Literal["t1", "t1ce", "t2", "flair"] = "t2"
    sites_root: Path = Path("data/raw/sites")


def flat_section(spec_field: str, spec_type: type):
    """A ``mode="before"`` validator: the keys of ``spec_type`` found at the section's top level
    are gathered under ``spec_field``, so params.yaml stays flat while each setting is declared
    once, in its component's dataclass."""
    names = {f.name for f in fields(spec_type)}

    def gather(cls, values):
        if isinstance(values, dict) and spec_field not in values:
            values = {k: v for k, v in values.items() if k not in names} | {
                spec_field: {k: v for k, v in values.items() if k in names}}
        return values

    return model_validator(mode="before")(classmethod(gather))


class PhantomParams(Section):
    """Where the phantoms go and how many processes write them; ``spec`` (the rest of the
    section) is the population itself."""

    hcp_root: Path = Path("data/raw/hcp")
    brats_root: Path = Path("data/raw/brats")
    sites_root: Path = Path("data/raw/sites")
    workers: int = Field(2, ge=1)
    spec: PhantomSpec = PhantomSpec()
    _gather = flat_section("spec", PhantomSpec)


class SplitRatios(Section):
    train: float = Field(0.7, ge=0.0)
    val: float = Field(0.15, gt=0.0)
    test: float = Field(0.15, gt=0.0)


# The words params.yaml uses for a step's "off" (None in the spec); null means "the preset's value".
OFF_WORDS = {"spacing_mm": "native", "middle_mm": "all"}
PRESET_ONLY = {"histogram_reference": (str | None, None)}  # none, healthy, tumour, standard or a NIfTI path


def _step_overrides() -> dict:
    """One optional field per PreprocessSpec step (bar the landmarks, which the stage computes):
    the types come from the spec, so each step is declared once."""
    hints = get_type_hints(PreprocessSpec)
    steps = {}
    for step in (f.name for f in fields(PreprocessSpec) if f.name != "histogram_landmarks"):
        kind = hints[step] | Literal[OFF_WORDS[step]] if step in OFF_WORDS else hints[step]
        steps[step] = (kind | None, None)
    return steps | PRESET_ONLY


PreprocessSteps = create_model("PreprocessSteps", __base__=Section, **_step_overrides())


class PreprocessParams(PreprocessSteps):
    """A preset (a paper's recipe) plus per-step overrides: a step left null takes the preset's value."""

    preset: str = "standard"
    split: SplitRatios = SplitRatios()
    tumour_split: SplitRatios | None = None  # the tumour cohort's, where it differs (null: split)
    seed: int = 7
    workers: int = Field(2, ge=1)
    on_error: Literal["skip", "stop"] = "skip"

    @model_validator(mode="after")
    def _check_spec(self) -> "PreprocessParams":
        self.spec()  # the preset's name and PreprocessSpec's own checks, reported with the section's name
        return self

    def recipe(self) -> dict:
        """The preset's steps with this section's non-null values on top."""
        steps = preset(self.preset)
        steps.update({k: v for k, v in self.model_dump(include=set(PreprocessSteps.model_fields)).items() if v is not None})
        return steps

    @property
    def reference(self) -> str:
        """Whose histogram to match: 'none', 'healthy', 'tumour', 'standard' or a NIfTI path."""
        return str(self.recipe().get("histogram_reference", "none"))

    def spec(self, histogram_landmarks: tuple[float, ...] | None = None) -> PreprocessSpec:
        steps = self.recipe()
        steps.pop("histogram_reference", None)
        steps = {k: None if OFF_WORDS.get(k) == v else v for k, v in steps.items()}
        return PreprocessSpec(**steps, histogram_landmarks=histogram_landmarks)


class ModelParams(Section):
    """``name`` picks the detector; one subsection per detector holds its hyper-parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "spatial_vae"

    @model_validator(mode="after")
    def _check(self) -> "ModelParams":
        accepted_hyperparams(self.name)  # a clear error for an unknown detector name
        for detector, values in {self.name: self.hyperparams(), **(self.model_extra or {})}.items():
            if detector not in DETECTORS:
                raise ValueError(f"model.{detector}: no detector of that name; choose one of {sorted(DETECTORS)}")
            if not isinstance(values, dict):
                raise ValueError(f"model.{detector} must be a mapping of hyper-parameters")
            if unknown := set(values) - accepted_hyperparams(detector):
                raise ValueError(f"model.{detector} has no hyper-parameter(s) {sorted(unknown)}; "
                                 f"it takes {sorted(accepted_hyperparams(detector))}")
        return self

    def hyperparams(self) -> dict:
        """The chosen detector's hyper-parameters (its class defaults for any not given)."""
        return dict((self.model_extra or {}).get(self.name) or {})


class TrainParams(Section):
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(1e-3, gt=0.0)
    num_workers: int = Field(2, ge=1)
    use_gpu: bool | Literal["auto"] = "auto"  # auto: GPU workers when the Ray cluster has GPUs
    cpus_per_worker: float = Field(1.0, gt=0.0)
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    storage_path: str = "artifacts/ray_results"  # checkpoints: a folder, or s3://, gs://, an NFS mount
    max_failures: int = Field(2, ge=0)  # a run survives this many worker failures (resumes from its checkpoint)
    validation_auroc: bool = False  # also score the tumour cohort's val slices each epoch (val_slice_auroc)
    seed: int = 0
    augment: AugmentSpec = AugmentSpec()


class EvaluateParams(Section):
    min_tumour_pixels: int = Field(20, ge=0)
    threshold_percentile: float = Field(98.0, gt=0.0, lt=100.0)
    pixel_threshold_percentile: float = Field(99.5, gt=0.0, lt=100.0)
    score_reference: Literal["none", "scan_median", "brain_median"] = "brain_median"
    pixel_median: int = Field(PIXEL_MEDIAN, ge=1)  # pixels, odd: the post-processing median's in-plane window
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")  # auto: a GPU when one is visible
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # of inference; the served model scores as evaluated
    min_component_voxels: int = Field(6, ge=1)
    tumour_pixel_sizes: list[int] = [0, 20, 50, 150]
    lesion_kinds: dict[int, str] = {1: "focus", 2: "cavity"}
    primary_metric: Literal["slice_auroc", "slice_auprc", "pixel_auroc", "pixel_auprc", "dice_mean"] = "slice_auroc"
    bootstrap_samples: int = Field(1000, ge=100)

    @field_validator("pixel_median")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd, so the window has a centre voxel: {value} is even")
        return value

    def scoring(self, device: torch.device) -> Scoring:
        """How the model scores and post-processes on ``device``, recorded with its thresholds:
        precision "auto" is bf16 where ``device`` computes it natively, fp32 elsewhere."""
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if native_bf16(device) else "fp32"
        return Scoring(self.score_reference, precision, self.pixel_median)


class CalibrateParams(Section):
    """Site calibration: thresholds from a site's own healthy scans."""

    target_false_alarm_rate: float = Field(0.05, gt=0.0, lt=0.5)
    healthy_scans: int = Field(10, ge=1)  # per site in `sites`: the first (by id) calibrate, the rest test
    min_scans: int = Field(10, ge=1)  # `calibrate` refuses fewer unless --allow-few-scans


class CompareParams(Section):
    """`brainomaly compare`: the detectors to train and evaluate in turn, and per detector the
    ``model``/``train`` settings that differ from the rest of params.yaml (e.g. a CPU budget)."""

    detectors: list[str] = Field(default_factory=lambda: sorted(DETECTORS), min_length=1)
    overrides: dict[str, dict[str, dict]] = {}

    @model_validator(mode="after")
    def _check(self) -> "CompareParams":
        for name in [*self.detectors, *self.overrides]:
            accepted_hyperparams(name)  # a clear error for an unknown detector
        for name, sections in self.overrides.items():
            if unknown := set(sections) - {"model", "train", "evaluate"}:
                raise ValueError(f"compare.overrides.{name} may set model, train and evaluate only, not {sorted(unknown)}")
            if bad := set(sections.get("model", {})) - accepted_hyperparams(name):
                raise ValueError(f"compare.overrides.{name}.model: {name} has no hyper-parameter(s) {sorted(bad)}")
            if bad := set(sections.get("train", {})) - set(TrainParams.model_fields):
                raise ValueError(f"compare.overrides.{name}.train: no train setting(s) {sorted(bad)}")
            if bad := set(sections.get("evaluate", {})) - set(EvaluateParams.model_fields):
                raise ValueError(f"compare.overrides.{name}.evaluate: no evaluate setting(s) {sorted(bad)}")
        return self


class OneClassParams(Section):
    """`brainomaly oneclass`: the one-class novelty protocol on a small image set."""

    data: str | None = None  # .npz with images (N, H, W) and labels (N,); None: scikit-learn's digits
    size: int = Field(16, ge=8)
    detectors: list[str] = Field(default_factory=lambda: ["latent_constrained"], min_length=1)
    hyperparams: dict[str, dict] = {}
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2)
    learning_rate: float = Field(1e-3, gt=0.0)
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "OneClassParams":
        for name in [*self.detectors, *self.hyperparams]:
            accepted_hyperparams(name)
        for name, values in self.hyperparams.items():
            if bad := set(values) - accepted_hyperparams(name):
                raise ValueError(f"oneclass.hyperparams.{name}: {name} has no hyper-parameter(s) {sorted(bad)}")
        return self


SAMPLERS = ("loguniform", "uniform", "choice", "randint")
TRAIN_KEYS = ("learning_rate", "batch_size")  # searchable settings of train, beside the model's


class TuneParams(Section):
    """`brainomaly tune`: a Ray Tune sweep over the chosen detector's loss weights and latent
    sizes (``space.<detector>``), each trial a Ray Train run of the ordinary training loop."""

    metric: str = "val_slice_auroc"
    mode: Literal["min", "max"] = "max"
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)  # further bounded by the cluster's CPUs/GPUs
    workers_per_trial: int = Field(1, ge=1)
    epochs: int = Field(6, ge=1)  # per trial; ASHA's max_t
    grace_period: int = Field(2, ge=1)  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = Field(2, ge=2)
    scheduler: Literal["asha", "none"] = "asha"
    search: Literal["optuna", "random"] = "optuna"
    seed: int = 0
    storage_path: str = "artifacts/tune"  # a folder, or s3://, gs://, an NFS mount: shared by all nodes
    max_failures: int = Field(1, ge=0)  # retries of a failed trial
    space: dict[str, dict[str, dict[str, list]]] = {}

    @model_validator(mode="after")
    def _check(self) -> "TuneParams":
        if self.grace_period > self.epochs:
            raise ValueError(f"tune.grace_period ({self.grace_period}) must be <= tune.epochs ({self.epochs})")
        for detector, space in self.space.items():
            allowed = accepted_hyperparams(detector) | set(TRAIN_KEYS)
            for key, sampler in space.items():
                if key not in allowed:
                    raise ValueError(f"tune.space.{detector}.{key}: not a hyper-parameter of {detector} nor one of "
                                     f"train's {list(TRAIN_KEYS)}")
                if len(sampler) != 1 or next(iter(sampler)) not in SAMPLERS:
                    raise ValueError(f"tune.space.{detector}.{key}: one of {list(SAMPLERS)} with its values, "
                                     f"e.g. {{loguniform: [0.001, 0.1]}}")
                kind, values = next(iter(sampler.items()))
                if kind != "choice" and (len(values) != 2 or not values[0] < values[1]):
                    raise ValueError(f"tune.space.{detector}.{key}: {kind} needs [low, high] with low < high")
                if kind == "loguniform" and values[0] <= 0:
                    raise ValueError(f"tune.space.{detector}.{key}: loguniform needs a positive low bound")
        return self


class RegisterParams(Section):
    """The registered model and its alias; ``rule`` (the rest of the section) is the promotion gate."""

    model_name: str = Field("brainomaly-detector", min_length=1)
    alias: str = Field("champion", min_length=1)
    rule: PromotionRule = PromotionRule()
    _gather = flat_section("rule", PromotionRule)


class AutoscalingParams(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingParams":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ServeParams(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_mb: float = Field(256, gt=0)
    max_voxels: int = Field(VolumeLimits.max_voxels, ge=8)
    max_axis: int = Field(VolumeLimits.max_axis, ge=2)
    thin_slices: bool = True  # the endpoint and `brainomaly score`: slices about a model pixel apart scored
    route_prefix: str = Field("/", pattern=r"^/[A-Za-z0-9._~/-]*$")
    model_version: int | None = Field(None, ge=1)  # pin this registered version; None follows register.alias
    spill_directory: Path | None = None  # where Ray may spill scans under memory pressure; None: nowhere
    metrics_require_key: bool = False
    num_replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0)  # per model replica; fractional shares a GPU between replicas
    cpus_per_replica: float = Field(1, gt=0)  # reserved per model replica, and the threads its torch uses
    autoscaling: AutoscalingParams | None = None
    max_ongoing_requests: int = Field(4, ge=1)
    max_queued_requests: int = Field(8, ge=1)  # Ray Serve: a positive bound (-1, unbounded, is not offered)
    registry_poll_s: float = Field(30, gt=0)
    upload_timeout_s: float = Field(60, gt=0)
    predict_timeout_s: float = Field(120, gt=0)
    batch_volumes: int | None = Field(None, ge=1)  # None: max_ongoing_requests on a GPU replica, 1 on CPUs
    batch_wait_s: float = Field(0.005, ge=0, le=1)
    drain_timeout_s: float = Field(30, gt=0)  # on SIGTERM/SIGINT: how long requests in flight may take to finish
    drift: DriftSettings = DriftSettings()

    @model_validator(mode="after")
    def _batches_fit_a_replica(self) -> "ServeParams":
        if self.batch_volumes is not None and self.batch_volumes > self.max_ongoing_requests:
            raise ValueError(f"serve.batch_volumes={self.batch_volumes} exceeds serve.max_ongoing_requests="
                             f"{self.max_ongoing_requests}: a replica can only batch the uploads it holds")
        return self

    def volumes_per_pass(self) -> int:
        """Uploads scored together: as set, else all a replica holds when it has a GPU to keep busy
        (on CPUs a shared pass is no faster and only adds ``batch_wait_s`` of latency)."""
        if self.batch_volumes is not None:
            return self.batch_volumes
        return self.max_ongoing_requests if self.num_gpus else 1

    def deployment_options(self) -> dict:
        """Ray Serve options of the model deployment: fixed replicas or autoscaling, backpressure,
        the CPUs of each replica, and a GPU share per replica when asked for."""
        scaling = {"autoscaling_config": self.autoscaling.model_dump()} if self.autoscaling else {"num_replicas": self.num_replicas}
        # Ray gives an actor as many OpenMP threads as CPUs it reserves: torch's threads follow
        resources = {"ray_actor_options": {"num_cpus": self.cpus_per_replica} | ({"num_gpus": self.num_gpus} if self.num_gpus else {})}
        return {**scaling, **resources, "max_ongoing_requests": self.max_ongoing_requests,
                "max_queued_requests": self.max_queued_requests, "graceful_shutdown_timeout_s": self.drain_timeout_s}


class ScoreParams(Section):
    """`brainomaly score`: how an archive is spread over the cluster."""

    actors: int = Field(1, ge=1)  # model actors scoring at once
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)  # 1: each actor scores on a GPU of its own
    volumes_per_batch: int = Field(4, ge=1)  # scans an actor scores in one pass of the network
    flush_every: int = Field(32, ge=1)  # scans between two writes of the results (what a stop can lose)


class Params(Section):
    """All of params.yaml. Relative paths are resolved against the file's folder (``root``)."""

    root: Path
    source: str = "params.yaml"  # the params file's name, in root
    overrides: tuple[str, ...] = ()  # --set section.key=value changes applied over the file
    data: DataParams
    phantoms: PhantomParams = PhantomParams()
    preprocess: PreprocessParams = PreprocessParams()
    validation: DataRules = Field(DataRules(), alias="validate")
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    calibrate: CalibrateParams = CalibrateParams()
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    compare: CompareParams = CompareParams()
    oneclass: OneClassParams = OneClassParams()
    tune: TuneParams = TuneParams()
    pacs: WatchSettings = WatchSettings()
    score: ScoreParams = ScoreParams()
    serve: ServeParams = ServeParams()

    @model_validator(mode="after")
    def _latent_fits_the_slices(self) -> "Params":
        stride = 2 ** int(self.model.hyperparams().get("downsamplings", 0))
        if self.preprocess.spec().size % stride:
            raise ValueError(
                f"model.downsamplings={self.model.hyperparams()['downsamplings']} needs preprocess.size divisible by {stride}"
            )
        return self

    @model_validator(mode="after")
    def _gate_has_a_margin(self) -> "Params":
        self.registry.rule.margin(self.evaluate.primary_metric)  # raises, naming the missing key
        return self

    def path(self, relative: str | Path) -> Path:
        """A path of the project, absolute, resolved against the params file's folder."""
        return (self.root / relative).resolve()

    def storage(self, location: str) -> str:
        """A storage location: a URI (s3://, gs://, ...) as given, a folder resolved like a path."""
        return location if "://" in location else str(self.path(location))


def with_overrides(raw: dict, overrides: tuple[str, ...] | list[str]) -> dict:
    """``raw`` with each ``section.key=value`` applied (the value read as YAML), like
    `dvc exp run -S`: a one-off change without editing the file."""
    raw = copy.deepcopy(raw)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {override!r}: expected section.key=value")
        *parents, leaf = key.strip().split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {override!r}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ParamsError(f"--set {override!r}: the value is not valid YAML ({err})") from None
    return raw


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] | list[str] = ()) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path.resolve()}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params(root=path.resolve().parent, source=path.name, overrides=tuple(overrides),
                      **with_overrides(raw, overrides))
    except (ValidationError, ValueError) as err:
        raise ParamsError(f"{path}: {_describe(err)}") from err


def _describe(err: Exception) -> str:
    if not isinstance(err, ValidationError):
        return str(err)
    return "; ".join(  # "spec" is where a flat section's dataclass sits, not a key the user wrote
        f"{'.'.join(str(part) for part in e['loc'] if part != 'spec')}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )
