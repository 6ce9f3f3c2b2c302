"""Ingest building blocks: ids, timestamps, labels, deduplication, feature kinds and tables."""

import numpy as np
import pandas as pd
import pytest

from mstage.data import features as feats
from mstage.data.ids import build_id_map
from mstage.data.ingest import build_table, clean_interactions
from mstage.data.labels import to_labels
from mstage.data.schema import Feature
from mstage.data.timestamps import to_unix_seconds
from mstage.errors import ConfigError, InputError

# ids ------------------------------------------------------------------------------------


def test_numeric_ids_are_kept_as_they_are():
    ids = pd.Series([42, 7, 42])
    id_map = build_id_map("user", [(ids, "x")])
    assert not id_map.is_string
    assert id_map.encode(ids).tolist() == [42, 7, 42]


def test_integral_floats_and_canonical_integer_text_count_as_numeric_ids():
    floats, text = pd.Series([3.0, 5.0]), pd.Series(["5", "-2"])
    id_map = build_id_map("item", [(floats, "a"), (text, "b")])
    assert not id_map.is_string
    assert id_map.encode(floats).tolist() == [3, 5]
    assert id_map.encode(text).tolist() == [5, -2]


def test_string_ids_get_ids_1_to_n_in_sorted_order_shared_across_tables():
    interactions = pd.Series(["u2", "u10", "u2"])
    table = pd.Series(["u1", "u10"])
    id_map = build_id_map("user", [(interactions, "a"), (table, "b")])
    # sorted strings: u1 -> 1, u10 -> 2, u2 -> 3
    assert id_map.table().to_dict("list") == {"raw_id": ["u1", "u10", "u2"], "id": [1, 2, 3]}
    assert id_map.encode(interactions).tolist() == [3, 2, 3]
    assert id_map.encode(table).tolist() == [1, 2]


def test_one_text_id_makes_every_id_of_that_kind_text():
    numbers, text = pd.Series([7, 10]), pd.Series(["007"])  # "007" is not canonical
    id_map = build_id_map("item", [(numbers, "a"), (text, "b")])
    # sorted strings: "007" -> 1, "10" -> 2, "7" -> 3
    assert id_map.encode(numbers).tolist() == [3, 2]
    assert id_map.encode(text).tolist() == [1]


@pytest.mark.parametrize("values, message", [
    ([1.0, 1.5], r"expected integer \(integral, exactly representable\) user ids in column 'u' "
                 r"of x.csv, found 1.5 in data row 2"),
    (["7", "1.5"], r"expected integer or text user ids in column 'u' of x.csv, found '1.5' in "
                   r"data row 2"),
    ([3, -1], r"expected user ids other than -1 in column 'u' of x.csv \(-1 pads candidate "
              r"lists\), found -1 in data row 2"),
    (["a", "b", " "], r"expected non-empty user ids in column 'u' of x.csv, found ' ' in data "
                      r"row 3"),
    (np.array([5, 2**63], dtype=np.uint64), r"expected integer \(int64\) user ids .*found "
                                            r"9223372036854775808 in data row 2"),
])
def test_ids_that_are_neither_integers_nor_text_are_refused_naming_the_row(values, message):
    with pytest.raises(InputError, match=message):
        build_id_map("user", [(pd.Series(values), "column 'u' of x.csv")])


def test_integral_float_text_is_the_integer_and_digits_beyond_int64_are_text():
    written_as_floats = pd.Series(["101387.0", "5.0", "12"])  # pandas after a NaN
    id_map = build_id_map("item", [(written_as_floats, "a")])
    assert not id_map.is_string and id_map.encode(written_as_floats).tolist() == [101387, 5, 12]
    huge = pd.Series(["99999999999999999999", "5"])
    assert build_id_map("item", [(huge, "a")]).raw.tolist() == ["5", "99999999999999999999"]


def test_id_map_translates_both_ways_and_unknown_text_is_the_cold_start_id():
    text = build_id_map("user", [(pd.Series(["u-2", "u-10", "u-1"]), "a")])
    # sorted: u-1 -> 1, u-10 -> 2, u-2 -> 3; never seen -> 0
    assert text.to_internal(["u-2", "u-404", "u-1"]).tolist() == [3, 0, 1]
    assert text.to_user(np.array([3, 1])) == ["u-2", "u-1"]
    assert text.parse(" u-10 ") == "u-10"
    numbers = build_id_map("user", [(pd.Series([42, 7]), "a")])
    assert numbers.to_internal([7, 99]).tolist() == [7, 99]  # unknown numbers stay themselves
    assert numbers.to_user(np.array([42])) == [42] and numbers.parse("42") == 42


# timestamps -----------------------------------------------------------------------------


def test_unix_seconds_pass_through_and_float_seconds_are_floored():
    assert to_unix_seconds(pd.Series([0, 1_700_000_000]), "t")[0].tolist() == [0, 1_700_000_000]
    seconds, unit = to_unix_seconds(pd.Series([1.9, 1_700_000_000.5]), "t")
    assert (seconds.tolist(), unit) == ([1, 1_700_000_000], "s")


def test_milliseconds_are_detected_by_magnitude():
    seconds, unit = to_unix_seconds(pd.Series([1_700_000_000_123, 1_700_000_001_999]), "t")
    assert (seconds.tolist(), unit) == ([1_700_000_000, 1_700_000_001], "ms")


def test_a_column_mixing_units_is_an_error_not_a_guess():
    with pytest.raises(InputError, match="expected timestamps in one unit in col.*from 5 to"):
        to_unix_seconds(pd.Series([5, 1_700_000_000_000]), "col")


def test_iso_text_is_parsed_as_utc_unless_it_has_a_zone():
    text = pd.Series(["1970-01-02", "1970-01-01T01:00:00+01:00", "2024-05-01T12:00:00Z"])
    seconds, unit = to_unix_seconds(text, "t")
    # 1 day = 86400 s; 01:00+01:00 is midnight UTC = 0; 2024-05-01T12:00Z = 1714564800
    assert (seconds.tolist(), unit) == ([86_400, 0, 1_714_564_800], "iso8601")


def test_numbers_stored_as_text_are_numbers():
    assert to_unix_seconds(pd.Series(["100", "200"]), "t")[0].tolist() == [100, 200]


def test_datetime_columns_become_seconds():
    ts = pd.Series(pd.to_datetime(["1970-01-01 00:00:10", "1970-01-01 00:01:00"]))
    assert to_unix_seconds(ts, "t")[0].tolist() == [10, 60]


def test_unparseable_timestamps_name_count_and_examples():
    text = pd.Series(["2024-05-01", "yesterday", "01/05/2024", "yesterday"])
    with pytest.raises(InputError, match=r"found 3 values that do not parse, like "
                                         r"'yesterday', '01/05/2024'"):
        to_unix_seconds(text, "column 'ts' of e.csv")


# labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[0, 1, 1], [False, True, True], [0.0, 1.0, 1.0],
                                    ["0", "1", "1"]])
def test_labels_accept_zero_one_in_any_spelling(values):
    labels = to_labels(pd.Series(values), "l")
    assert labels.dtype == np.int8 and labels.tolist() == [0, 1, 1]


def test_labels_other_than_zero_one_are_refused_with_examples():
    with pytest.raises(InputError, match=r"labels 0 or 1 in c, found 2 other values, like 5, 2"):
        to_labels(pd.Series([1, 5, 0, 2]), "c")


# cleaning -------------------------------------------------------------------------------


def test_clean_sorts_by_user_then_time_and_merges_repeated_events_keeping_a_click():
    user = np.array([2, 1, 1, 1, 1])
    item = np.array([9, 8, 7, 7, 7])
    time = np.array([5, 30, 20, 20, 20])
    label = np.array([1, 1, 0, 1, 0], dtype=np.int8)
    df, dropped = clean_interactions(user, item, time, label)
    # (1,7,20) appears three times with labels 0,1,0 -> one row with label 1; user 1 first.
    assert dropped == 2
    assert df.to_dict("list") == {"user_id": [1, 1, 2], "item_id": [7, 8, 9],
                                  "timestamp": [20, 30, 5], "label": [1, 1, 1]}


# feature kinds --------------------------------------------------------------------------

OPTIONS = feats.KindOptions.from_lists([], [], [], [], "|")


def test_kinds_are_inferred_from_values():
    items = pd.DataFrame({
        "item_id": [1, 2], "category": ["shoes", "books"], "price": [9.5, 20.0],
        "in_stock": np.array([0, 1], dtype=np.int8), "tags": ["sale|new", "gift"],
        "genres": [["a", "b"], []], "launched": pd.to_datetime(["2024-01-01", "2024-02-01"]),
    })
    kinds = {f.name: f.kind for _, f in feats.feature_columns(items, "item_id", OPTIONS, "x")}
    assert kinds == {"category": "categorical", "price": "numeric", "in_stock": "numeric",
                     "tags": "multi", "genres": "multi", "launched": "numeric"}


def test_declared_kinds_win_and_ignored_columns_are_left_out():
    users = pd.DataFrame({"user_id": [1], "region": [3], "notes": ["x|y"], "zip": ["0213"]})
    options = feats.KindOptions.from_lists(["region"], [], [], ["notes"], "|")
    kinds = {f.name: f.kind for _, f in feats.feature_columns(users, "user_id", options, "x")}
    assert kinds == {"region": "categorical", "zip": "categorical"}


def test_feature_names_become_safe_identifiers_and_collisions_are_refused():
    assert feats.safe_name("Children's") == "Children_s"
    assert feats.safe_name("Sci-Fi") == "Sci_Fi"
    assert feats.safe_name("1st") == "f_1st"
    df = pd.DataFrame({"id": [1], "a-b": [1], "a_b": [2]})
    with pytest.raises(InputError, match="'a-b' and 'a_b' both stored as 'a_b'"):
        feats.feature_columns(df, "id", OPTIONS, "items.csv")


def test_a_column_declared_with_two_kinds_or_declared_and_ignored_is_a_config_error():
    with pytest.raises(ConfigError, match="'price' declared both categorical and numeric"):
        feats.KindOptions.from_lists(["price"], ["price"], [], [], "|")
    with pytest.raises(ConfigError, match="found tags in both"):
        feats.KindOptions.from_lists([], [], ["tags"], ["tags"], "|")
    with pytest.raises(ConfigError, match="non-empty multi-valued separator"):
        feats.KindOptions.from_lists([], [], [], [], "")


def test_typed_columns_store_strings_floats_and_string_lists():
    categorical = feats.typed_column(pd.Series([3.0, np.nan, 1.0]), Feature("c", "categorical"),
                                     "|", "x")
    assert categorical.to_pylist() == ["3", None, "1"]  # integral floats print as integers
    numeric = feats.typed_column(pd.Series(["1.5", None]), Feature("n", "numeric"), "|", "x")
    assert numeric.to_pylist()[0] == 1.5 and np.isnan(numeric.to_pylist()[1])
    multi = feats.typed_column(pd.Series(["a| b||c", None, "d"]), Feature("m", "multi"), "|", "x")
    assert multi.to_pylist() == [["a", "b", "c"], [], ["d"]]


def test_multi_valued_list_cells_and_all_missing_cells():
    lists = pd.Series([np.array(["a", " b "]), None, []], dtype=object)
    assert feats.typed_column(lists, Feature("m", "multi"), "|", "x").to_pylist() == [
        ["a", "b"], [], []]
    empty = pd.Series([None, None], dtype=object)
    assert feats.typed_column(empty, Feature("m", "multi"), "|", "x").to_pylist() == [[], []]


def test_text_declared_numeric_names_the_bad_values():
    with pytest.raises(InputError, match=r"numbers in column 'price' of items.csv, found 1 "
                                         r"values like 'cheap'"):
        feats.typed_column(pd.Series(["1", "cheap"], name="price"), Feature("price", "numeric"),
                           "|", "items.csv")


# tables ---------------------------------------------------------------------------------


def test_table_adds_uncovered_ids_with_missing_features_and_keeps_the_first_duplicate():
    df = pd.DataFrame({"item_id": [30, 10, 30], "category": ["a", "b", "c"],
                       "price": [1.0, 2.0, 3.0], "tags": ["x|y", "y", "z"]})
    id_map = build_id_map("item", [(df["item_id"], "t")])
    warnings: list[str] = []
    table = build_table("item", df, "item_id", id_map, np.array([10, 20]), OPTIONS, "items.pq",
                        warnings)
    # ids: 10 and 30 from the table (second 30 dropped), 20 from the interactions only.
    assert table.ids.tolist() == [10, 20, 30]
    assert table.columns["category"].to_pylist() == ["b", None, "a"]
    assert np.isnan(table.columns["price"].to_pylist()[1])
    assert table.columns["tags"].to_pylist() == [["y"], [], ["x", "y"]]
    assert (table.duplicates, table.uncovered) == (1, 1)
    assert any("lacks 1 item ids" in w and "missing features" in w for w in warnings)
    assert any("1 rows repeating an earlier item id" in w for w in warnings)


def test_nearly_unique_text_and_empty_columns_draw_warnings():
    df = pd.DataFrame({"title": [f"t{i}" for i in range(60)], "empty": [np.nan] * 60})
    columns = [("title", Feature("title", "categorical")), ("empty", Feature("empty", "numeric"))]
    warnings = feats.feature_warnings(df, columns, "movies.pq")
    assert "'title' of movies.pq looks like free text" in warnings[0]
    assert "'empty' of movies.pq is empty in every row" in warnings[1]
