-- The scheduled pipeline (cronjob-daily-clicks.yaml): clicks per user and
-- day from the raw Parquet files that land in the object store, recomputed
-- each night. The object store's credentials come from the environment
-- (the kiln-object-store Secret).
CREATE EXTERNAL TABLE clicks (user_id BIGINT, ts TIMESTAMP, dwell_ms DOUBLE)
STORED AS PARQUET
LOCATION '${RAW:-s3://raw}/clicks/';

CREATE EXTERNAL TABLE daily_clicks
STORED AS FEATURES
LOCATION '${FEATURES:-s3://features}/daily_clicks'
OPTIONS ('key' 'user_id,day', 'timestamp' 'day', 'mode' 'overwrite');

INSERT INTO daily_clicks
SELECT user_id, CAST(ts AS DATE) AS day, COUNT(*) AS clicks, AVG(dwell_ms) AS avg_dwell_ms
FROM clicks
GROUP BY user_id, CAST(ts AS DATE);
