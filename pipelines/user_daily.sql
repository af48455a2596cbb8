-- Per-user daily engagement features from the click stream.
--
-- One row per (user, day): activity counts, distinct items touched, dwell
-- time, purchases, the user's segment from the users table, and how the
-- day's activity compares with every other user-day (a z-score over the
-- whole result). A full snapshot each run.

CREATE EXTERNAL TABLE events
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/events/';

CREATE EXTERNAL TABLE users
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/users/';

CREATE EXTERNAL TABLE user_daily
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/user_daily'
OPTIONS ('key' 'user_id,day', 'timestamp' 'day', 'mode' 'overwrite');

INSERT INTO user_daily
WITH daily AS (
    SELECT user_id,
           CAST(event_time AS DATE)                      AS day,
           count(*)                                      AS events,
           count(DISTINCT item_id)                       AS distinct_items,
           avg(dwell_ms)                                 AS avg_dwell_ms,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases
    FROM events
    GROUP BY user_id, CAST(event_time AS DATE)
)
SELECT d.user_id,
       d.day,
       d.events,
       d.distinct_items,
       d.avg_dwell_ms,
       d.purchases,
       u.segment,
       u.country,
       (d.events - avg(d.events) OVER ()) / stddev(d.events) OVER () AS events_zscore
FROM daily d
JOIN users u ON u.user_id = d.user_id;
