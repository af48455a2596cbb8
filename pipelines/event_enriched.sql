-- Every click event enriched for training: the user's and the item's
-- attributes joined on, a missing dwell time filled with the median of the
-- item's category, and derived columns. As many rows out as events in.

CREATE EXTERNAL TABLE events
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/events/';

CREATE EXTERNAL TABLE users
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/users/';

CREATE EXTERNAL TABLE items
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/items/';

CREATE EXTERNAL TABLE event_enriched
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/event_enriched'
OPTIONS ('key' 'event_id', 'timestamp' 'event_time', 'mode' 'overwrite');

INSERT INTO event_enriched
WITH enriched AS (
    SELECT e.event_id, e.user_id, e.item_id, e.event_type, e.event_time, e.dwell_ms,
           u.segment, u.country, i.category, i.price
    FROM events e
    JOIN users u ON u.user_id = e.user_id
    JOIN items i ON i.item_id = e.item_id
),
category_dwell AS (
    SELECT category, median(dwell_ms) AS median_dwell_ms
    FROM enriched
    GROUP BY category
)
SELECT x.event_id,
       x.user_id,
       x.item_id,
       x.event_type,
       x.event_time,
       x.segment,
       x.country,
       x.category,
       x.price,
       coalesce(x.dwell_ms, c.median_dwell_ms)                       AS dwell_ms,
       x.dwell_ms IS NULL                                            AS dwell_imputed,
       CASE WHEN x.event_type = 'purchase' THEN x.price ELSE 0 END  AS revenue,
       CAST(date_part('hour', x.event_time) AS BIGINT)               AS hour_of_day,
       CAST(date_part('dow', x.event_time) AS BIGINT)                AS day_of_week,
       ln(1 + coalesce(x.dwell_ms, c.median_dwell_ms))               AS log_dwell,
       coalesce(x.dwell_ms, c.median_dwell_ms) / c.median_dwell_ms   AS dwell_vs_category
FROM enriched x
JOIN category_dwell c ON x.category IS NOT DISTINCT FROM c.category;
