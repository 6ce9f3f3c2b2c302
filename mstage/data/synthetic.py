"""Synthetic Ali-CCP-like impressions with clicks, with planted structure models must learn.

The world: every user and item has a latent factor (dimension `DIM`). An item's factor is its
category's centroid plus a brand offset, a price-tier direction and noise, so category, brand
and price carry signal. A user's factor leans towards one favourite category (and less towards
a second) drawn from a distribution set by age group, gender and region, plus an age-driven
price taste and noise, so user features carry signal too. Item popularity follows a power law.

Impressions come from a "previous recommender" that shows only in-stock items: some are
popularity draws over the catalog, the rest pick a category by the user's affinity, draw a few
candidates in it by popularity and show the one the user likes best (with noise). A shown
item is clicked with probability sigmoid(CLICK_SCALE * u.v + item_bias + offset), the offset
calibrated to the target CTR.
Nothing depends on time, so a user-temporal split is predictable. Everything is vectorised
and streamed to parquet in chunks of whole users.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mstage.errors import UsageError
from mstage.progress import SILENT, Reporter

DIM = 16
CLICK_SCALE = 3.0  # logit per unit of affinity u.v
CATEGORY_SHARPNESS = 4.0  # how strongly the previous recommender follows category affinity
PICK_SHARPNESS = 4.0  # how strongly it picks the best-liked of its candidates
POPULARITY_SHARE = 0.1  # impressions drawn by popularity alone
CANDIDATES = 8
CANDIDATE_POP_POWER = 0.5  # candidates are drawn in proportion to popularity ** this
ZIPF_EXPONENT = 1.0
START_TIME = 1_788_220_800  # 2026-09-01 00:00:00 UTC
SPAN_SECONDS = 6 * 7 * 86_400  # six weeks
CHUNK_ROWS = 500_000
MARKER = "generator.json"
FACTORS = "factors.npz"
TABLES = ("interactions.parquet", "users.parquet", "items.parquet")

AGE_GROUPS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
AGE_SHARES = [0.16, 0.26, 0.22, 0.16, 0.12, 0.08]
GENDERS = ["female", "male", "unknown"]
GENDER_SHARES = [0.48, 0.46, 0.06]
REGIONS = ["north", "south", "east", "west", "central", "northeast", "northwest",
           "southeast", "southwest", "coastal"]
CATEGORIES = ["electronics", "books", "fashion", "home", "beauty", "sports", "toys", "grocery",
              "garden", "automotive", "music", "movies", "health", "baby", "pets", "office",
              "jewelry", "shoes", "tools", "games", "kitchen", "outdoor", "crafts", "travel"]
TAGS = ["sale", "new", "premium", "eco", "bestseller", "limited", "gift", "bundle"]


def user_ids(n: int) -> np.ndarray:
    """Dense index -> user id: starts at 1, every fifth id skipped (1,2,3,4,6,...)."""
    idx = np.arange(n, dtype=np.int64)
    return 1 + idx + idx // 4


def item_ids(n: int) -> np.ndarray:
    """Dense index -> item id: odd numbers from 100001, never confusable with an index."""
    return 100_001 + 2 * np.arange(n, dtype=np.int64)


@dataclass
class World:
    """The hidden truth behind a data set: factors, biases and the features they explain.

    user_factors [n_users, DIM] and item_factors [n_items, DIM] float32; item_bias and
    item_popularity [n_items] float64 (popularity sums to 1); codes index the name lists above.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    item_popularity: np.ndarray
    category_centroids: np.ndarray
    user_age: np.ndarray
    user_gender: np.ndarray
    user_region: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    item_price: np.ndarray
    item_in_stock: np.ndarray
    item_tags: np.ndarray  # bit mask over TAGS
    click_offset: float = 0.0

    @property
    def n_users(self) -> int:
        return len(self.user_factors)

    @property
    def n_items(self) -> int:
        return len(self.item_factors)

    def click_logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Click log-odds of dense user/item indices (same shape, elementwise)."""
        affinity = np.einsum("nd,nd->n", self.user_factors[users], self.item_factors[items])
        return CLICK_SCALE * affinity + self.item_bias[items] + self.click_offset


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gumbel(rng: np.random.Generator, shape) -> np.ndarray:
    return -np.log(-np.log(rng.random(shape, dtype=np.float32) + 1e-12) + 1e-12)


def _search(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Positions of uniforms u (any shape) in a cdf ending at 1.

    Sorting the queries first keeps the binary searches in cache: ~3x faster on 1M items.
    """
    flat = u.ravel()
    order = np.argsort(flat)
    pos = np.empty(len(flat), dtype=np.int64)
    pos[order] = np.searchsorted(cdf, flat[order], side="right")
    return np.minimum(pos, len(cdf) - 1).reshape(u.shape)


def build_world(n_users: int, n_items: int, seed: int) -> World:
    """Draw factors and features (not the impressions) deterministically from `seed`."""
    rng = np.random.default_rng([seed, 1])
    n_cat = min(len(CATEGORIES), max(2, n_items // 20), n_items)
    centroids = _unit(rng.normal(size=(n_cat, DIM))).astype(np.float32)
    price_dir = _unit(rng.normal(size=DIM)).astype(np.float32)

    # items: category, brand (each brand in one category, skewed shares), price tier
    pop = (1.0 + rng.permutation(n_items)) ** -ZIPF_EXPONENT
    cat_weight = rng.dirichlet(np.full(n_cat, 4.0))
    category = rng.choice(n_cat, size=n_items, p=cat_weight)
    category[: min(n_cat, n_items)] = np.arange(min(n_cat, n_items))
    n_brands = int(np.clip(n_items // 25, n_cat, 2000))
    brands_in_cat = (n_brands - 1 - np.arange(n_cat)) // n_cat + 1  # brands c, c+C, c+2C, ...
    local = np.floor(brands_in_cat[category] * rng.random(n_items) ** 2).astype(np.int64)
    brand = category + n_cat * local
    brand_vec = rng.normal(size=(n_brands, DIM)).astype(np.float32) / np.sqrt(DIM)
    brand_tier = rng.choice([-1, 0, 1], size=n_brands, p=[0.3, 0.45, 0.25])
    tier = brand_tier[brand]
    item_noise = rng.normal(size=(n_items, DIM)).astype(np.float32) / np.sqrt(DIM)
    item_factors = (centroids[category] + 1.2 * brand_vec[brand]
                    + 0.4 * tier[:, None] * price_dir + 0.5 * item_noise)
    cat_price = np.exp(rng.uniform(np.log(8), np.log(300), size=n_cat))
    price = np.round(cat_price[category] * np.exp(0.5 * tier + 0.35 * rng.normal(size=n_items)),
                     2)
    log_pop = np.log(pop)
    item_bias = 0.3 * (log_pop - log_pop.mean()) / (log_pop.std() + 1e-9)
    item_bias += 0.3 * rng.normal(size=n_items)

    tags = np.zeros(n_items, dtype=np.int64)
    tag_prob = {"sale": 0.15 + 0.2 * (tier < 0), "new": 0.2, "premium": 0.7 * (tier > 0),
                "eco": 0.1, "limited": 0.05, "gift": 0.1, "bundle": 0.08}
    for bit, name in enumerate(TAGS):
        if name == "bestseller":
            hit = pop >= np.quantile(pop, 0.95)
        else:
            hit = rng.random(n_items) < tag_prob[name]
        tags |= hit.astype(np.int64) << bit

    # users: segment features decide the favourite categories; factors lean towards them
    age = rng.choice(len(AGE_GROUPS), size=n_users, p=AGE_SHARES)
    gender = rng.choice(len(GENDERS), size=n_users, p=GENDER_SHARES)
    region = rng.choice(len(REGIONS), size=n_users, p=rng.dirichlet(np.full(len(REGIONS), 5.0)))
    age_vec = 1.0 * rng.normal(size=(len(AGE_GROUPS), n_cat))
    gender_vec = 1.0 * rng.normal(size=(len(GENDERS), n_cat))
    region_vec = 0.6 * rng.normal(size=(len(REGIONS), n_cat))
    fav_logits = (age_vec[age] + gender_vec[gender] + region_vec[region]).astype(np.float32)
    # two favourites drawn without replacement (one when there is a single category)
    fav = np.argsort(-(fav_logits + _gumbel(rng, fav_logits.shape)), axis=1)[:, :2]
    age_price = np.linspace(-0.5, 0.5, len(AGE_GROUPS), dtype=np.float32)[age]
    user_noise = rng.normal(size=(n_users, DIM)).astype(np.float32) / np.sqrt(DIM)
    user_factors = (centroids[fav[:, 0]] + 0.5 * centroids[fav[:, -1]]
                    + age_price[:, None] * price_dir + 0.6 * user_noise)

    return World(
        user_factors=user_factors.astype(np.float32),
        item_factors=item_factors.astype(np.float32),
        item_bias=item_bias, item_popularity=pop / pop.sum(), category_centroids=centroids,
        user_age=age, user_gender=gender, user_region=region,
        item_category=category, item_brand=brand, item_price=price,
        item_in_stock=(rng.random(n_items) < 0.9).astype(np.int8), item_tags=tags,
    )


class _Sampler:
    """The previous recommender: which item each impression of a user shows."""

    def __init__(self, world: World):
        self.world = world
        # It never showed out-of-stock items (unless nothing is in stock, in tiny worlds).
        in_stock = world.item_popularity * world.item_in_stock
        shown = in_stock if in_stock.sum() > 0 else world.item_popularity
        self.cum_all = np.cumsum(shown)
        self.cum_all /= self.cum_all[-1]
        order = np.argsort(world.item_category, kind="stable")
        self.by_category = order  # item indices grouped by category
        weight = shown[order] ** CANDIDATE_POP_POWER
        self.cum = np.cumsum(weight) / weight.sum()
        n_cat = len(world.category_centroids)
        bounds = np.searchsorted(world.item_category[order], np.arange(n_cat + 1))
        self.cat_lo = np.concatenate([[0.0], self.cum])[bounds[:-1]]
        self.cat_hi = self.cum[bounds[1:] - 1]
        mass = np.bincount(world.item_category, shown, minlength=n_cat)
        with np.errstate(divide="ignore"):  # a category with nothing in stock is never chosen
            self.log_cat_mass = np.log(mass).astype(np.float32)

    def _draw(self, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Items drawn ∝ popularity**CANDIDATE_POP_POWER within [lo, hi) of the category cdf."""
        return self.by_category[_search(self.cum, lo + (hi - lo) * rng.random(lo.shape))]

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Item index shown at each impression of dense users [n] -> [n]."""
        w = self.world
        n = len(users)
        items = _search(self.cum_all, rng.random(n))
        guided = np.flatnonzero(rng.random(n) >= POPULARITY_SHARE)
        uf = w.user_factors[users[guided]]  # [g, DIM]
        cat_logits = CATEGORY_SHARPNESS * uf @ w.category_centroids.T + self.log_cat_mass
        cat = np.argmax(cat_logits + _gumbel(rng, cat_logits.shape), axis=1)
        shape = (len(guided), CANDIDATES)
        cand = self._draw(np.broadcast_to(self.cat_lo[cat][:, None], shape),
                          np.broadcast_to(self.cat_hi[cat][:, None], shape), rng)
        liking = np.matmul(w.item_factors[cand], uf[:, :, None])[..., 0]  # [g, CANDIDATES]
        best = np.argmax(PICK_SHARPNESS * liking + _gumbel(rng, shape), axis=1)
        items[guided] = cand[np.arange(len(guided)), best]
        return items


def calibrate_offset(world: World, counts: np.ndarray, target_ctr: float, seed: int,
                     sample: int = 200_000) -> float:
    """The click offset giving `target_ctr` on simulated impressions (bisection on the mean).

    counts [n_users]: impressions per user, so the sample weighs users as the data will.
    """
    rng = np.random.default_rng([seed, 2])
    users = rng.choice(world.n_users, size=sample, p=counts / counts.sum())
    items = _Sampler(world).sample(users, rng)
    world.click_offset = 0.0
    logit = world.click_logit(users, items)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) < target_ctr:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class Summary:
    """What `generate` wrote; stored (less out_dir and seconds) as DIR/generator.json."""

    out_dir: str
    users: int
    items: int
    interactions: int
    clicks: int
    ctr: float
    seed: int
    target_ctr: float
    files: list[str]
    seconds: float
    start_time: int = START_TIME
    end_time: int = START_TIME + SPAN_SECONDS


def validate(users: int, items: int, interactions: int, target_ctr: float = 0.1) -> None:
    """Usage errors for counts the generator cannot honour."""
    for name, value in (("--users", users), ("--items", items), ("--interactions", interactions)):
        if value <= 0:
            raise UsageError(f"expected {name} > 0, found {value}; pass a positive count")
    if interactions < users:
        raise UsageError(
            f"expected --interactions >= --users (every user gets at least one impression), "
            f"found {interactions} < {users}; raise --interactions or lower --users"
        )
    if not 0 < target_ctr < 1:
        raise UsageError(f"expected a target CTR in (0, 1), found {target_ctr}")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory this generator did not write (unless force)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"expected --out to be a directory, found a file at {out}; "
                         "pass another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
        raise UsageError(
            f"expected --out to be empty or an earlier generate-data output, found other files "
            f"in {out}; pass another --out or --force to write there anyway"
        )


def _users_table(world: World):
    import pyarrow as pa

    return pa.table({
        "user_id": pa.array(user_ids(world.n_users)),
        "age_group": pa.array(AGE_GROUPS).take(pa.array(world.user_age)),
        "gender": pa.array(GENDERS).take(pa.array(world.user_gender)),
        "region": pa.array(REGIONS).take(pa.array(world.user_region)),
    })


def _items_table(world: World):
    import pyarrow as pa

    n_brands = int(world.item_brand.max()) + 1
    brands = [f"brand-{b:04d}" for b in range(n_brands)]
    masks = range(1 << len(TAGS))
    tag_strings = ["|".join(t for bit, t in enumerate(TAGS) if m >> bit & 1) for m in masks]
    return pa.table({
        "item_id": pa.array(item_ids(world.n_items)),
        "category": pa.array(CATEGORIES).take(pa.array(world.item_category)),
        "brand": pa.array(brands).take(pa.array(world.item_brand)),
        "price": pa.array(world.item_price.astype(np.float64)),
        "in_stock": pa.array(world.item_in_stock.astype(np.int8)),
        "tags": pa.array(tag_strings).take(pa.array(world.item_tags)),
    })


def _impression_counts(n_users: int, interactions: int, seed: int) -> np.ndarray:
    """Impressions per user [n_users]: one each plus a lognormal-activity multinomial share."""
    rng = np.random.default_rng([seed, 3])
    activity = rng.lognormal(0.0, 0.8, size=n_users)
    return 1 + rng.multinomial(interactions - n_users, activity / activity.sum())


def _write_interactions(world: World, counts: np.ndarray, path: Path, seed: int,
                        reporter: Reporter) -> int:
    """Stream impressions to parquet in chunks of whole users, sorted by user then time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()),
                        ("timestamp", pa.int64()), ("click", pa.int8())])
    uid, iid = user_ids(world.n_users), item_ids(world.n_items)
    sampler = _Sampler(world)
    ends = np.cumsum(counts)
    cuts = np.unique(np.searchsorted(ends, np.arange(CHUNK_ROWS, ends[-1], CHUNK_ROWS)))
    bounds = [0, *(cuts + 1).tolist(), world.n_users]
    bounds = sorted(set(bounds))
    clicks = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer, \
            reporter.task("impressions", total=int(ends[-1])) as task:
        for chunk, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            rng = np.random.default_rng([seed, 4, chunk])
            users = np.repeat(np.arange(lo, hi), counts[lo:hi])
            items = sampler.sample(users, rng)
            prob = 1 / (1 + np.exp(-world.click_logit(users, items)))
            click = (rng.random(len(users)) < prob).astype(np.int8)
            ts = START_TIME + rng.integers(0, SPAN_SECONDS, size=len(users))
            order = np.lexsort((ts, users))
            writer.write_table(pa.table({
                "user_id": uid[users[order]], "item_id": iid[items[order]],
                "timestamp": ts[order], "click": click[order],
            }, schema=schema))
            clicks += int(click.sum())
            task.advance(len(users))
    return clicks


def save_factors(world: World, path: Path) -> None:
    """The truth as .npz (no pickle): ids, factors, biases, popularity and the click offset."""
    np.savez(path, user_id=user_ids(world.n_users), item_id=item_ids(world.n_items),
             user_factors=world.user_factors, item_factors=world.item_factors,
             item_bias=world.item_bias, item_popularity=world.item_popularity,
             click_scale=np.float64(CLICK_SCALE), click_offset=np.float64(world.click_offset))


def load_factors(path: Path) -> dict[str, np.ndarray]:
    """Read DIR/factors.npz written with save_factors=True."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def generate(out_dir: str | os.PathLike[str], users: int, items: int, interactions: int,
             seed: int = 0, *, target_ctr: float = 0.1, with_factors: bool = False,
             force: bool = False, reporter: Reporter = SILENT) -> Summary:
    """Write interactions/users/items parquet (and factors.npz) into `out_dir`.

    Files are written to a staging directory inside `out_dir` and moved into place at the
    end, so a failure or Ctrl-C leaves an earlier output intact.
    """
    validate(users, items, interactions, target_ctr)
    out = Path(out_dir)
    check_out_dir(out, force)
    import pyarrow.parquet as pq

    started = time.perf_counter()
    world = build_world(users, items, seed)
    counts = _impression_counts(users, interactions, seed)
    world.click_offset = calibrate_offset(world, counts, target_ctr, seed)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".generate-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        pq.write_table(_users_table(world), staging / "users.parquet", compression="zstd")
        pq.write_table(_items_table(world), staging / "items.parquet", compression="zstd")
        clicks = _write_interactions(world, counts, staging / "interactions.parquet", seed,
                                     reporter)
        files = list(TABLES)
        if with_factors:
            save_factors(world, staging / FACTORS)
            files.append(FACTORS)
        summary = Summary(out_dir=str(out), users=users, items=items, interactions=interactions,
                          clicks=clicks, ctr=round(clicks / interactions, 4), seed=seed,
                          target_ctr=target_ctr, files=files,
                          seconds=round(time.perf_counter() - started, 2))
        # the marker holds only what the seed determines, so regenerating gives the same bytes
        marker = {k: v for k, v in asdict(summary).items() if k not in ("out_dir", "seconds")}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if not with_factors:
            (out / FACTORS).unlink(missing_ok=True)
        for name in [*files, MARKER]:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
