"""FeatureEncoders: vocabularies with 0 for unknown, numeric normalisation, padding, save/load."""

import numpy as np
import pandas as pd
import pytest

from mstage.data.schema import Feature, Schema
from mstage.errors import InputError
from mstage.models.encoders import FeatureEncoders, IdVocab, StringVocab

SCHEMA = Schema(
    user_features=[Feature("gender", "categorical"), Feature("age", "numeric")],
    item_features=[Feature("tags", "multi"), Feature("category", "categorical")],
)


@pytest.fixture
def tables():
    users = pd.DataFrame({"user_id": [30, 10, 20], "gender": ["f", "m", "f"],
                          "age": [20.0, 40.0, np.nan]})
    items = pd.DataFrame({"item_id": [7, 5], "tags": [["a", "b"], ["b"]],
                          "category": ["x", None]})
    return users, items


@pytest.fixture
def encoders(tables):
    return FeatureEncoders.fit(*tables, SCHEMA)


def test_id_vocab_maps_sorted_ids_and_unknown_to_zero():
    vocab = IdVocab(np.array([30, 10, 20, 10]))
    # sorted distinct ids [10, 20, 30] -> 1, 2, 3; 99 and -1 unseen -> 0
    assert vocab.lookup([20, 99, 10, 30, -1]).tolist() == [2, 0, 1, 3, 0]
    assert len(vocab) == 4


def test_string_vocab_orders_by_frequency_and_ignores_missing():
    vocab = StringVocab.fit(["b", "a", "b", None, float("nan"), "c", "a", "b"])
    # counts b=3, a=2, c=1 -> indices 1, 2, 3; missing values never enter the vocabulary
    assert vocab.values == ["b", "a", "c"]
    assert vocab.lookup(np.array(["c", "b", "zzz", "a"])).tolist() == [3, 1, 0, 2]
    assert vocab.lookup([None, "a"]).tolist() == [0, 2]


def test_encode_users_vectorised(encoders, tables):
    out = encoders.encode_users(tables[0])
    assert out["user_id"].tolist() == [3, 1, 2]  # ids 30, 10, 20 in sorted order 10, 20, 30
    assert out["gender"].tolist() == [1, 2, 1]  # f (2 rows) before m
    # age: mean of 20 and 40 = 30, std = 10 -> -1, +1; NaN -> 0 after normalising
    np.testing.assert_allclose(out["age"], [-1.0, 1.0, 0.0])
    assert out["age"].dtype == np.float32 and out["user_id"].dtype == np.int64


def test_encode_items_pads_multi_and_drops_unknown_values(encoders):
    out = encoders.encode_items({"item_id": np.array([5, 6]),
                                 "tags": [["b", "new", "a"], "a|b"],
                                 "category": np.array(["x", "y"])})
    # tags vocabulary: b (2 uses) -> 1, a -> 2; L = 2 (longest list when fitted)
    assert out["tags"].tolist() == [[1, 2], [2, 1]]
    assert out["item_id"].tolist() == [1, 0]  # 6 was never seen
    assert out["category"].tolist() == [1, 0]  # y unknown; None was not a value


def test_save_load_round_trip_gives_identical_encodings(encoders, tables, tmp_path):
    encoders.save(tmp_path / "enc")
    loaded = FeatureEncoders.load(tmp_path / "enc")
    for side, frame in (("users", tables[0]), ("items", tables[1])):
        a = getattr(encoders, f"encode_{side}")(frame)
        b = getattr(loaded, f"encode_{side}")(frame)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert loaded.specs("item") == encoders.specs("item")
    assert not list((tmp_path / "enc").glob("*.pkl"))


def test_specs_describe_inputs(encoders):
    specs = {s.name: s for s in encoders.specs("item")}
    assert (specs["item_id"].kind, specs["item_id"].cardinality) == ("id", 3)
    assert (specs["tags"].shape, specs["tags"].cardinality) == ((2,), 3)
    assert specs["category"].cardinality == 2  # x + index 0


def test_fit_ids_from_interactions_only(tables):
    interactions = pd.DataFrame({"user_id": [10], "item_id": [7]})
    enc = FeatureEncoders.fit(*tables, SCHEMA, interactions=interactions)
    assert enc.encode_users(tables[0])["user_id"].tolist() == [0, 1, 0]


def test_missing_column_is_an_input_error(encoders):
    with pytest.raises(InputError, match="expected columns age to encode"):
        encoders.encode_users({"user_id": [10], "gender": ["f"]})


def test_shared_feature_name_is_rejected(tables):
    schema = Schema([Feature("category", "categorical")], [Feature("category", "categorical")])
    users = tables[0].assign(category="x")
    with pytest.raises(InputError, match="distinct user and item feature names, found category"):
        FeatureEncoders.fit(users, tables[1], schema)


def test_load_without_files_names_the_command(tmp_path):
    with pytest.raises(InputError, match="run `mstage train-retrieval`"):
        FeatureEncoders.load(tmp_path)
