"""The training configuration: one frozen object, and every key a sweep searches changes what
the trial trains with (its detector, its optimizers' learning rates or its batches)."""

import dataclasses

import pytest

from components.models.registry import build_detector
from pipelines import train, tune
from pipelines.params import load_params
from tests.conftest import REPO, write_params

SPACE = load_params(REPO / "params.yaml").tune.space


def trained_with(config: train.TrainingConfig) -> dict:
    """What a trial's training actually uses: the built detector's settings and shapes, its
    optimizers' learning rates and the batch size."""
    detector = build_detector(config.model_name, **config.hyperparams)
    optimizers = detector.make_optimizers(config.train.learning_rate)
    return {
        "batch_size": config.train.batch_size,
        "learning_rates": sorted(group["lr"] for o in optimizers.values() for group in o.param_groups),
        "settings": {k: v for k, v in vars(detector).items() if isinstance(v, (bool, int, float, str, tuple))},
        "shapes": {k: tuple(v.shape) for k, v in detector.state_dict().items()},
    }


def two_values(sampler: dict) -> list:
    kind, values = next(iter(sampler.items()))
    return list(values[:2])  # [low, high] of a range, or the first two choices


@pytest.mark.parametrize("detector", sorted(SPACE))
def test_every_searched_key_changes_what_the_trial_trains(processed_project, detector):
    params = load_params(write_params(processed_project, name=f"params-{detector}.yaml", model={"name": detector}))
    base = tune.sweep_config(params)
    for key, sampler in SPACE[detector].items():
        first, second = (trained_with(tune.apply(base, {key: value})) for value in two_values(sampler))
        assert first != second, f"tune.space.{detector}.{key} changes nothing the trial trains with"


def test_a_detectors_own_learning_rate_is_searched_and_adopted_as_its_own(processed_project):
    params = load_params(write_params(processed_project, name="params-dual.yaml", model={"name": "dual_vae"}))
    config = tune.apply(tune.sweep_config(params), {"learning_rate": 0.002, "kl_weight": 0.05})
    assert config.hyperparams["learning_rate"] == 0.002 and config.train.learning_rate == params.train.learning_rate
    command = tune.adopt_command(params, {"learning_rate": 0.002, "kl_weight": 0.05}, ["learning_rate", "kl_weight"])
    assert command == "dvc exp run -S model.dual_vae.learning_rate=0.002 -S model.dual_vae.kl_weight=0.05"


def test_the_config_is_frozen_and_holds_each_value_once(processed_project):
    config = train.training_config(load_params(write_params(processed_project, name="params-frozen.yaml")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model_name = "dense_ae"
    with pytest.raises(Exception, match="frozen"):
        config.train.epochs = 1
    fields = {f.name for f in dataclasses.fields(config)}
    assert not fields & set(type(config.train).model_fields), "a train setting stored twice"
    assert config.with_changes(train={"epochs": 2}).train.epochs == 2 and config.train.epochs != 2
    with pytest.raises(ValueError, match="epochs"):
        config.with_changes(train={"epochs": 0})


def test_an_auto_residual_is_the_one_the_scans_contrast_calls_for(processed_project):
    for modality, residual in (("t2", "brighter"), ("flair", "brighter"), ("t1", "absolute")):
        params = load_params(write_params(processed_project, name=f"params-{modality}.yaml", data={"modality": modality},
                                          model={"name": "denoising_ae"}))
        assert params.model.hyperparams()["residual"] == "auto"
        config = train.training_config(params)
        assert config.hyperparams["residual"] == residual
        assert build_detector(config.model_name, **config.hyperparams).residual == residual
