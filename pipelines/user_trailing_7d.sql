-- Per-user trailing 7-day activity: for every day a user was active, the
-- sums over that day and the six before it (a RANGE window over dates, so
-- days without activity count as zero rather than shifting the window).

CREATE EXTERNAL TABLE events
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/events/';

CREATE EXTERNAL TABLE user_trailing_7d
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/user_trailing_7d'
OPTIONS ('key' 'user_id,day', 'timestamp' 'day', 'mode' 'overwrite');

INSERT INTO user_trailing_7d
WITH daily AS (
    SELECT user_id,
           CAST(event_time AS DATE)                        AS day,
           count(*)                                        AS events,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
           sum(dwell_ms)                                   AS dwell_ms
    FROM events
    GROUP BY user_id, CAST(event_time AS DATE)
)
SELECT user_id,
       day,
       sum(events)    OVER w7 AS events_7d,
       sum(purchases) OVER w7 AS purchases_7d,
       sum(dwell_ms)  OVER w7 AS dwell_ms_7d,
       count(*)       OVER w7 AS active_days_7d
FROM daily
WINDOW w7 AS (PARTITION BY user_id ORDER BY day
              RANGE BETWEEN INTERVAL '6' DAY PRECEDING AND CURRENT ROW);
