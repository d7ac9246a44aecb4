import json

import pytest

from lib import config
from lib.errors import UserError


def test_defaults_validate_and_round_trip_json(tmp_path):
    cfg = config.Config().validate()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = config.from_dict(config.load_json(str(path)))
    assert again == cfg


def test_set_overrides_parse_types():
    cfg = config.apply_overrides(config.Config(), [
        "train.epochs=7", "train.learning_rate=1e-4", "data.crop_shape=[128,128]",
        "augment.enabled=false", "model.dropout=0.2", "model.pool_size=[1,2,2]", "train.optimizer=sgd",
        "data.crop_shape=(64, 64)",
    ])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.train.learning_rate == 1e-4
    assert cfg.data.crop_shape == [64, 64]
    assert cfg.augment.enabled is False
    assert cfg.model.dropout == 0.2
    assert cfg.model.pool_size == [1, 2, 2]
    assert cfg.train.optimizer == "sgd"


def test_later_sources_win():
    cfg = config.from_dict({"train": {"epochs": 3, "batch_size": 2}})
    cfg = config.from_dict({"train": {"epochs": 5}}, base=cfg)
    config.apply_overrides(cfg, ["train.epochs=9"])
    assert (cfg.train.epochs, cfg.train.batch_size) == (9, 2)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-1", "train.epochs: expected a value in [0, inf), got -1"),
    ("train.epochs=0", "train.epochs=0 predicts with the weights of train.pretrained without training, but "
                       "train.pretrained is not set"),
    ("train.epoch=5", "unknown option 'train.epoch' (did you mean 'train.epochs'?)"),
    ("trian.epochs=5", "unknown option 'trian.epochs'"),
    ("train.epochs=five", "train.epochs: expected an integer, got 'five'"),
    ("train.epochs", "expected section.key=value"),
    ("train.optimizer=adagrad", "train.optimizer: unknown value 'adagrad'"),
    ("train.loss=focal", "train.loss: unknown value 'focal'"),
    ("model.name=vnet", "model.name: unknown value 'vnet'"),
    ("inference.overlap=1.0", "inference.overlap: expected a value in [0.0, 1.0), got 1.0"),
    ("data.val_fraction=1", "data.val_fraction: expected a value in [0.0, 1.0)"),
    ("data.min_fg_fraction=5", "data.min_fg_fraction: expected a value in [0.0, 1.0)"),
    ("data.crop_shape=[256]", "data.crop_shape: expected 2 (y, x) or 3 (z, y, x) sizes"),
    ("augment.flip_p=1.5", "augment.flip_p: expected a value in [0.0, 1.0]"),
    ("model.dropout=[0.1,0.2]", "model.dropout: expected one rate per level (5 values"),
    ("augment.enabled=2", "augment.enabled: expected true or false, got 2"),
])
def test_bad_overrides_name_the_option(override, message):
    with pytest.raises(UserError) as err:
        config.apply_overrides(config.Config(), [override]).validate()
    assert message in str(err.value)


def test_batch_overlap_needs_an_overlap_loss():
    with pytest.raises(UserError, match="train.batch_overlap=true: train.loss=bce has no Dice or Jaccard sums"):
        config.apply_overrides(config.Config(), ["train.loss=bce", "train.batch_overlap=true"]).validate()
    for loss in ("dice", "jaccard", "bce_dice"):
        config.apply_overrides(config.Config(), [f"train.loss={loss}", "train.batch_overlap=true"]).validate()


def test_resize_upsampling_needs_batch_norm_in_lib_networks():
    with pytest.raises(UserError, match="model.upsampling=resize with model.batch_norm=false: .* set "
                                        "model.upsampling=transpose, or model.batch_norm=true"):
        config.apply_overrides(config.Config(), ["model.upsampling=resize", "model.batch_norm=false"]).validate()
    config.apply_overrides(config.Config(), ["model.upsampling=resize", "model.batch_norm=true"]).validate()
    config.apply_overrides(config.Config(), ["model.upsampling=transpose", "model.batch_norm=false"]).validate()


def test_dice_or_jaccard_alone_need_batch_norm_in_lib_networks():
    for loss in ("dice", "jaccard"):
        with pytest.raises(UserError, match=f"train.loss={loss} with model.batch_norm=false: .* use train.loss=bce_dice"):
            config.apply_overrides(config.Config(), [f"train.loss={loss}", "model.batch_norm=false"]).validate()
        config.apply_overrides(config.Config(), [f"train.loss={loss}", "model.batch_norm=true"]).validate()
    config.apply_overrides(config.Config(), ["train.loss=bce_dice", "model.batch_norm=false"]).validate()
    # Multi-class Dice (softmax) was not measured: allowed.
    config.apply_overrides(config.Config(), ["train.loss=dice", "model.batch_norm=false", "model.classes=3"]).validate()


def test_unknown_section_in_file_is_named():
    with pytest.raises(UserError, match="unknown section 'trainn'.*did you mean 'train'"):
        config.from_dict({"trainn": {"epochs": 1}}, source="x.json")


def test_bad_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        config.load_json(str(path))


def test_string_options_keep_the_text_typed():
    cfg = config.apply_overrides(config.Config(), ["train.schedule=none", "train.pretrained=400_0"])
    assert cfg.train.schedule == "none" and cfg.train.pretrained == "400_0"
    cfg.validate()
    assert config.apply_overrides(config.Config(), ["train.pretrained=null"]).train.pretrained is None
    assert config.apply_overrides(config.Config(), ['train.pretrained="null"']).train.pretrained == "null"


def test_non_finite_numbers_are_refused_in_config_files_too():
    with pytest.raises(UserError, match=r"model.dropout: expected a finite number, got nan"):
        config.from_dict({"model": {"dropout": [0.1, float("nan"), 0.1, 0.1, 0.1]}})
