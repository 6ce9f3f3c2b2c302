"""mstage.toml: typed sections, errors naming file and key, CLI overrides, round trip."""

import pytest

from mstage.config import (
    Config,
    DataConfig,
    RankingConfig,
    RetrievalConfig,
    load_config,
    override,
    save_section,
)
from mstage.errors import ConfigError


def test_defaults_without_file(tmp_path):
    assert load_config(tmp_path / "mstage.toml") == Config()


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "mstage.toml"
    path.write_text("[retrieval]\nepochz = 3\n")
    expected = r"unknown key 'epochz' in \[retrieval\] of .*mstage.toml"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_unknown_section(tmp_path):
    path = tmp_path / "mstage.toml"
    path.write_text("[retrival]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[retrival\]"):
        load_config(path)


def test_wrong_type(tmp_path):
    path = tmp_path / "mstage.toml"
    path.write_text('[retrieval]\nepochs = "three"\n')
    with pytest.raises(ConfigError, match="expected int for .*'epochs', found 'three'"):
        load_config(path)


def test_invalid_value(tmp_path):
    path = tmp_path / "mstage.toml"
    path.write_text("[retrieval]\nepochs = 0\n")
    with pytest.raises(ConfigError, match=r"retrieval.epochs > 0, found 0"):
        load_config(path)


def test_int_accepted_for_float(tmp_path):
    path = tmp_path / "mstage.toml"
    path.write_text("[retrieval]\nlearning_rate = 1\n")
    assert load_config(path).retrieval.learning_rate == 1.0


def test_override_ignores_absent_options_and_validates():
    base = RetrievalConfig(epochs=5)
    assert override(base, epochs=None, seed=7) == RetrievalConfig(epochs=5, seed=7)
    with pytest.raises(ConfigError):
        override(base, batch_size=-1)


def test_override_with_flags_names_the_option():
    with pytest.raises(ConfigError, match=r"^expected --batch-size > 0, found -1; pass a "
                                          r"positive value$"):
        override(RetrievalConfig(), flags=True, batch_size=-1)
    with pytest.raises(ConfigError, match=r"^expected retrieval.batch_size > 0, found -1$"):
        override(RetrievalConfig(), batch_size=-1)


@pytest.mark.parametrize("seed", [-1, 2**32])
@pytest.mark.parametrize(("cls", "section"), [(RetrievalConfig, "retrieval"),
                                              (RankingConfig, "ranking")])
def test_seed_outside_numpy_range_is_rejected(cls, section, seed):
    with pytest.raises(ConfigError, match=rf"expected {section}.seed in 0..4294967295, "
                                          rf"found {seed}"):
        cls(seed=seed)
    assert cls(seed=2**32 - 1).seed == 2**32 - 1


def test_save_section_round_trip_keeps_other_sections(tmp_path):
    path = tmp_path / "mstage.toml"
    path.write_text("[retrieval]\nepochs = 3\n")
    data = DataConfig(item_col='movie "id"', categorical=["a", "b"])
    save_section(path, "data", data)
    cfg = load_config(path)
    assert cfg.data == data
    assert cfg.retrieval.epochs == 3
