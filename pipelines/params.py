"""params.yaml -> typed, validated sections. A bad value is reported with its key, e.g.
``params.yaml: train.epochs: Input should be greater than or equal to 1``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.data.phantoms import PhantomSpec
from components.preprocess.spec import PreprocessSpec


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LayoutName = Literal["auto", "hcp", "ixi", "bids", "brats", "brats2023"]


class DataParams(Section):
    healthy_root: Path
    healthy_layout: LayoutName = "auto"
    tumour_root: Path
    tumour_layout: LayoutName = "auto"
    modality: Literal["t1", "t1ce", "t2", "flair"] = "t2"


class PhantomParams(Section):
    hcp_root: Path = Path("data/raw/hcp")
    brats_root: Path = Path("data/raw/brats")
    seed: int = 2021
    n_healthy: int = Field(30, ge=3)
    n_tumour: int = Field(20, ge=3)
    voxel_size_mm: float = Field(2.0, ge=1.0, le=4.0)
    deformation_mm: float = Field(3.0, ge=0.0)
    bias_strength: float = Field(0.25, ge=0.0)
    noise_std: float = Field(0.02, ge=0.0)
    tumour_radius_mm: tuple[float, float] = (10.0, 30.0)
    workers: int = Field(2, ge=1)

    def spec(self) -> PhantomSpec:
        return PhantomSpec(**self.model_dump(exclude={"hcp_root", "brats_root", "workers"}))


class SplitRatios(Section):
    train: float = Field(0.7, ge=0.0)
    val: float = Field(0.15, gt=0.0)
    test: float = Field(0.15, gt=0.0)


class PreprocessParams(Section):
    size: int = 64
    min_brain_fraction: float = 0.3
    percentiles: tuple[float, float] = (1.0, 99.0)
    split: SplitRatios = SplitRatios()
    seed: int = 7
    workers: int = Field(2, ge=1)
    on_error: Literal["skip", "stop"] = "skip"

    @model_validator(mode="after")
    def _check_spec(self) -> "PreprocessParams":
        self.spec()  # PreprocessSpec's own checks, reported with the section's name
        return self

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(size=self.size, min_brain_fraction=self.min_brain_fraction, percentiles=self.percentiles)


class ValidateParams(Section):
    max_value: float = 1.0
    min_brain_coverage: float = Field(0.05, ge=0.0, le=1.0)
    allowed_labels: list[int] = [0, 1, 2, 4]


class ModelParams(Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # detector hyper-parameters vary by name
    name: str = "spatial_vae"

    def hyperparams(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if k != "name"}


class TrainParams(Section):
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(1e-3, gt=0.0)
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    seed: int = 0


class EvaluateParams(Section):
    min_tumour_pixels: int = Field(20, ge=0)
    threshold_percentile: float = Field(98.0, gt=0.0, lt=100.0)
    primary_metric: Literal["slice_auroc", "slice_auprc", "pixel_auroc", "pixel_auprc", "dice_mean"] = "slice_auroc"


class RegisterParams(Section):
    model_name: str = Field("brainomaly-detector", min_length=1)
    alias: str = Field("champion", min_length=1)


class ServeParams(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_mb: float = Field(256, gt=0)
    num_replicas: int = Field(1, ge=1)


class Params(Section):
    """All of params.yaml. Relative paths are resolved against the file's folder (``root``)."""

    root: Path
    data: DataParams
    phantoms: PhantomParams = PhantomParams()
    preprocess: PreprocessParams = PreprocessParams()
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    serve: ServeParams = ServeParams()

    @model_validator(mode="after")
    def _latent_fits_the_slices(self) -> "Params":
        stride = 2 ** int(self.model.hyperparams().get("downsamplings", 0))
        if self.preprocess.size % stride:
            raise ValueError(
                f"model.downsamplings={self.model.hyperparams()['downsamplings']} needs preprocess.size divisible by {stride}"
            )
        return self

    def path(self, relative: str | Path) -> Path:
        """A path of the project, absolute, resolved against the params file's folder."""
        return (self.root / relative).resolve()


def load_params(path: str | Path = "params.yaml") -> Params:
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
        return Params(root=path.resolve().parent, **raw)
    except (ValidationError, ValueError) as err:
        raise ParamsError(f"{path}: {_describe(err)}") from err


def _describe(err: Exception) -> str:
    if not isinstance(err, ValidationError):
        return str(err)
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in err.errors()
    )
