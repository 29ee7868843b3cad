import pytest
import yaml

from pipelines.params import ParamsError, load_params
from tests.conftest import REPO, write_params


def test_repo_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.model.name == "denoising_ae" and params.preprocess.spec().size == 64
    assert params.path(params.data.healthy_root).is_absolute() and params.data.tumour_layout == "auto"


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("train", {"epochs": 0}, "train.epochs"),
        ("train", {"epoch": 3}, "train.epoch: Extra inputs are not permitted"),
        ("preprocess", {"size": 50}, "preprocess.size must be a multiple of 16"),
        ("data", {"modality": "dwi"}, "data.modality"),
        ("data", {"healthy_layout": "oasis"}, "data.healthy_layout"),
        ("evaluate", {"primary_metric": "accuracy"}, "evaluate.primary_metric"),
        ("evaluate", {"pixel_median": 4}, "evaluate.pixel_median: .*must be odd"),
        ("compare", {"overrides": {"spatial_ae": {"evaluate": {"median": 3}}}}, "compare.overrides.spatial_ae.evaluate: no evaluate"),
        ("model", {"spatial_vae": {"downsamplings": 6}}, "needs preprocess.size divisible by 64"),
        ("model", {"name": "made_up"}, "model.name 'made_up' is not a detector"),
        ("model", {"dense_aee": {}}, "model.dense_aee: no detector of that name"),
        ("model", {"spatial_vae": {"latent_size": 3}}, "model.spatial_vae has no hyper-parameter"),
        ("serve", {"max_queued_requests": -1}, "serve.max_queued_requests"),
        ("serve", {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas .3. is above max_replicas"),
        ("serve", {"drift": {"window": 50, "min_scores": 100}}, "min_scores .100. is above window"),
        ("preprocess", {"normalisation": "minmax"}, "preprocess.normalisation: Input should be 'percentile' or 'zscore'"),
        ("preprocess", {"crop": "centre"}, "preprocess.crop: Input should be 'brain_box' or 'fixed'"),
        ("preprocess", {"spacing_mm": "fine"}, "preprocess.spacing_mm"),
        ("phantoms", {"foci_p": 2}, "phantoms: phantoms.foci_p is a probability"),
        ("phantoms", {"tumour_size": 3}, "phantoms.tumour_size: Extra inputs are not permitted"),
        ("train", {"augment": {"flip_p": -1}}, "train.augment.flip_p is a probability"),
        ("validate", {"abnormal_fraction": [0.9, 0.1]}, "validate.abnormal_fraction must be"),
        ("register", {"confidence": 1.5}, "register.confidence must lie in"),
        ("register", {"margins": {"dice_mean": 0.1}}, "register.margins has no margin for slice_auroc"),
        ("register", {"margins": {"slice_auroc": -0.1}}, "register.margins must be >= 0"),
    ],
)
def test_bad_values_name_their_key(tmp_path, section, values, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write_params(tmp_path, **{section: values}))


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_tiny_params_are_valid(tmp_path):
    params = load_params(write_params(tmp_path))
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["epochs"] == params.train.epochs


def test_serve_options_become_ray_serve_deployment_options(tmp_path):
    fixed = load_params(write_params(tmp_path, serve={"num_replicas": 2, "max_ongoing_requests": 3, "max_queued_requests": 5}))
    assert fixed.serve.deployment_options() == {"num_replicas": 2, "max_ongoing_requests": 3, "max_queued_requests": 5,
                                                "graceful_shutdown_timeout_s": 30, "ray_actor_options": {"num_cpus": 2}}
    scaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    auto = load_params(write_params(tmp_path, serve={"autoscaling": scaling})).serve.deployment_options()
    assert auto["autoscaling_config"] == scaling and "num_replicas" not in auto
    shared = load_params(write_params(tmp_path, serve={"num_gpus": 0.5})).serve.deployment_options()
    assert shared["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}  # two replicas per GPU


def test_uploads_share_a_pass_on_gpu_replicas_unless_told(tmp_path):
    def passes(**serve) -> int:
        return load_params(write_params(tmp_path, serve={"max_ongoing_requests": 4, **serve})).serve.volumes_per_pass()

    assert passes() == 1 and passes(num_gpus=1) == 4 and passes(num_gpus=0.5, batch_volumes=2) == 2
    assert passes(batch_volumes=3) == 3  # on CPUs too when asked
    with pytest.raises(ValueError, match="batch_volumes=5 exceeds serve.max_ongoing_requests=4"):
        passes(batch_volumes=5)


@pytest.mark.parametrize("section, values", [("evaluate", {"device": "gpu"}), ("evaluate", {"precision": "fp16"}),
                                             ("serve", {"num_gpus": -1}), ("serve", {"batch_wait_s": 5})])
def test_a_bad_device_precision_or_gpu_share_is_refused(tmp_path, section, values):
    with pytest.raises(ValueError, match=next(iter(values))):
        load_params(write_params(tmp_path, **{section: values}))


def test_evaluate_scores_in_the_precision_its_device_resolves(tmp_path):
    import torch

    from components.machine import native_bf16

    cpu = torch.device("cpu")
    expected = {"auto": "bf16" if native_bf16(cpu) else "fp32", "fp32": "fp32", "bf16": "bf16"}
    for precision, resolved in expected.items():
        scoring = load_params(write_params(tmp_path, evaluate={"precision": precision})).evaluate.scoring(cpu)
        assert scoring.precision == resolved


def test_each_setting_is_declared_once():
    """A section that hands its values to a component's dataclass holds that dataclass, not a
    copy of its fields (and their defaults)."""
    from dataclasses import fields

    from components.data.augment import AugmentSpec
    from components.data.phantoms import PhantomSpec
    from components.metrics.promotion import PromotionRule
    from components.monitoring.drift import DriftSettings
    from components.validation.gate import DataRules
    from pipelines import params as module

    pairs = {module.PhantomParams: PhantomSpec, module.TrainParams: AugmentSpec, module.ServeParams: DriftSettings,
             module.RegisterParams: PromotionRule, module.Params: DataRules}
    for section, component in pairs.items():
        assert not {f.name for f in fields(component)} & set(section.model_fields), \
            f"{section.__name__} re-declares {component.__name__}'s fields"
    assert not {"AugmentParams", "ValidateParams", "DriftParams"} & set(vars(module)), "a params copy of a component's settings"
    params = load_params(REPO / "params.yaml")
    assert isinstance(params.phantoms.spec, PhantomSpec) and isinstance(params.train.augment, AugmentSpec)
    assert isinstance(params.validation, DataRules) and isinstance(params.serve.drift, DriftSettings)
    assert isinstance(params.registry.rule, PromotionRule)


def test_preprocessing_steps_are_the_specs_own():
    from dataclasses import fields

    from components.preprocess.spec import PreprocessSpec
    from pipelines.params import PreprocessSteps

    steps = {f.name for f in fields(PreprocessSpec)} - {"histogram_landmarks"}
    assert steps <= set(PreprocessSteps.model_fields)
    params = load_params(REPO / "params.yaml", ["preprocess.spacing_mm=native", "preprocess.middle_mm=40"])
    assert params.preprocess.spec().spacing_mm is None and params.preprocess.spec().middle_mm == 40
