"""The sample pipelines written with Python Polars' lazy API, for
benches/bench.py: each function takes the demo's raw folder and returns a
LazyFrame with the same rows as the pipeline of the same name in
pipelines/ (the benchmark checks that they agree), or, for a pipeline with
several INSERTs, a dict of them by feature set. Those are run together
(`collect_all`), so Polars shares their common scans.

    python benches/polars_pipelines.py NAME RAW OUT_DIR

writes OUT_DIR/FEATURE_SET.parquet for each.
"""
import sys

import polars as pl


def events(raw):
    # The day=... folders are not read as a column: kiln's tables do not
    # add one either, and `day` is a name the pipelines compute.
    return pl.scan_parquet(f"{raw}/events/*/*.parquet", hive_partitioning=False)


def users(raw):
    return pl.scan_parquet(f"{raw}/users/*.parquet")


def items(raw):
    return pl.scan_parquet(f"{raw}/items/*.parquet")


DAY = pl.col("event_time").dt.date().alias("day")
PURCHASE = pl.col("event_type") == "purchase"


def user_daily(raw):
    daily = events(raw).group_by("user_id", DAY).agg(
        pl.len().alias("events"),
        pl.col("item_id").n_unique().alias("distinct_items"),
        pl.col("dwell_ms").mean().alias("avg_dwell_ms"),
        PURCHASE.sum().alias("purchases"),
    )
    return daily.join(users(raw), on="user_id", how="inner").select(
        "user_id",
        "day",
        "events",
        "distinct_items",
        "avg_dwell_ms",
        "purchases",
        "segment",
        "country",
        ((pl.col("events") - pl.col("events").mean()) / pl.col("events").std()).alias("events_zscore"),
    )


def item_daily(raw):
    joined = events(raw).join(items(raw), on="item_id", how="inner")
    return joined.group_by("item_id", DAY, "category").agg(
        (pl.col("event_type") == "view").sum().alias("views"),
        PURCHASE.sum().alias("purchases"),
        pl.col("user_id").n_unique().alias("distinct_users"),
        pl.when(PURCHASE).then(pl.col("price")).otherwise(0.0).sum().alias("revenue"),
        (PURCHASE.sum().cast(pl.Float64) / pl.len()).alias("conversion_rate"),
    )


def user_trailing_7d(raw):
    daily = (
        events(raw)
        .group_by("user_id", DAY)
        .agg(
            pl.len().alias("events"),
            PURCHASE.sum().alias("purchases"),
            pl.col("dwell_ms").sum().alias("dwell_ms"),
        )
        .sort("user_id", "day")
    )
    # (day - 7 days, day]: the day and the six before it.
    return daily.rolling(index_column="day", period="7d", group_by="user_id").agg(
        pl.col("events").sum().alias("events_7d"),
        pl.col("purchases").sum().alias("purchases_7d"),
        pl.col("dwell_ms").sum().alias("dwell_ms_7d"),
        pl.len().alias("active_days_7d"),
    )


def event_enriched(raw):
    enriched = (
        events(raw)
        .join(users(raw), on="user_id", how="inner")
        .join(items(raw), on="item_id", how="inner")
    )
    medians = enriched.group_by("category").agg(pl.col("dwell_ms").median().alias("median_dwell_ms"))
    filled = pl.coalesce("dwell_ms", "median_dwell_ms")
    return enriched.join(medians, on="category", how="inner", nulls_equal=True).select(
        "event_id",
        "user_id",
        "item_id",
        "event_type",
        "event_time",
        "segment",
        "country",
        "category",
        "price",
        filled.alias("dwell_ms"),
        pl.col("dwell_ms").is_null().alias("dwell_imputed"),
        pl.when(PURCHASE).then(pl.col("price")).otherwise(0.0).alias("revenue"),
        pl.col("event_time").dt.hour().cast(pl.Int64).alias("hour_of_day"),
        # Sunday 0 to Saturday 6, as date_part('dow') counts.
        (pl.col("event_time").dt.weekday() % 7).cast(pl.Int64).alias("day_of_week"),
        (filled + 1).log().alias("log_dwell"),
        (filled / pl.col("median_dwell_ms")).alias("dwell_vs_category"),
    )


def user_vs_usual(raw):
    daily = events(raw).group_by("user_id", DAY).agg(
        pl.len().alias("events"),
        pl.col("dwell_ms").sum().alias("dwell_ms"),
    )
    usual = daily.group_by("user_id").agg(
        pl.col("events").mean().alias("usual_events"),
        pl.col("dwell_ms").mean().alias("usual_dwell_ms"),
        pl.len().alias("active_days"),
    )
    return daily.join(usual, on="user_id", how="inner").select(
        "user_id",
        "day",
        "events",
        "dwell_ms",
        "usual_events",
        "active_days",
        (pl.col("events") - pl.col("usual_events")).alias("events_vs_usual"),
        (pl.col("dwell_ms") - pl.col("usual_dwell_ms")).alias("dwell_vs_usual"),
    )


def activity_totals(raw):
    revenue = pl.when(PURCHASE).then(pl.col("price")).otherwise(0.0).sum().alias("revenue")
    with_items = events(raw).join(items(raw), on="item_id", how="inner")
    user_totals = with_items.group_by("user_id").agg(
        pl.len().alias("events"),
        PURCHASE.sum().alias("purchases"),
        revenue,
        pl.col("dwell_ms").mean().alias("avg_dwell_ms"),
        pl.col("event_time").min().alias("first_seen"),
        pl.col("event_time").max().alias("last_seen"),
    )
    item_totals = events(raw).group_by("item_id").agg(
        pl.len().alias("events"),
        (pl.col("event_type") == "view").sum().alias("views"),
        PURCHASE.sum().alias("purchases"),
        pl.col("dwell_ms").mean().alias("avg_dwell_ms"),
        pl.col("event_time").max().alias("last_seen"),
    )
    category_hourly = with_items.group_by("category", pl.col("event_time").dt.hour().cast(pl.Int64).alias("hour_of_day")).agg(
        pl.len().alias("events"),
        pl.col("user_id").n_unique().alias("users"),
        revenue,
    )
    return {"user_totals": user_totals, "item_totals": item_totals, "category_hourly": category_hourly}


PIPELINES = {
    "user_daily": user_daily,
    "item_daily": item_daily,
    "user_trailing_7d": user_trailing_7d,
    "event_enriched": event_enriched,
    "activity_totals": activity_totals,
    "user_vs_usual": user_vs_usual,
}

if __name__ == "__main__":
    name, raw, out = sys.argv[1:4]
    frames = PIPELINES[name](raw)
    if not isinstance(frames, dict):
        frames = {name: frames}
    pl.collect_all([lf.sink_parquet(f"{out}/{t}.parquet", lazy=True) for t, lf in frames.items()])
