-- Per-item daily conversion features, processed incrementally.
--
-- Each run reads only the event files no earlier run of this pipeline has
-- committed (new days landing in the events folder), joins the item
-- catalogue, and appends one row per (item, day). A run with no new files
-- commits nothing.

CREATE EXTERNAL TABLE events
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/events/'
OPTIONS ('incremental' 'true');

CREATE EXTERNAL TABLE items
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/items/';

CREATE EXTERNAL TABLE item_daily
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/item_daily'
OPTIONS ('key' 'item_id,day', 'timestamp' 'day', 'mode' 'append');

INSERT INTO item_daily
SELECT e.item_id,
       CAST(e.event_time AS DATE)                                      AS day,
       i.category,
       count(*) FILTER (WHERE e.event_type = 'view')                   AS views,
       count(*) FILTER (WHERE e.event_type = 'purchase')               AS purchases,
       count(DISTINCT e.user_id)                                       AS distinct_users,
       sum(CASE WHEN e.event_type = 'purchase' THEN i.price ELSE 0 END) AS revenue,
       CAST(count(*) FILTER (WHERE e.event_type = 'purchase') AS DOUBLE)
           / count(*)                                                  AS conversion_rate
FROM events e
JOIN items i ON i.item_id = e.item_id
GROUP BY e.item_id, CAST(e.event_time AS DATE), i.category;
