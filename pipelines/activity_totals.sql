-- Lifetime activity from one set of sources into three feature sets: per
-- user, per item, and per item category and hour of the day. One run
-- executes the three INSERTs at once and commits a version of each.

CREATE EXTERNAL TABLE events
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/events/';

CREATE EXTERNAL TABLE items
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/items/';

CREATE EXTERNAL TABLE user_totals
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/user_totals'
OPTIONS ('key' 'user_id', 'mode' 'overwrite');

CREATE EXTERNAL TABLE item_totals
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/item_totals'
OPTIONS ('key' 'item_id', 'mode' 'overwrite');

CREATE EXTERNAL TABLE category_hourly
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/category_hourly'
OPTIONS ('key' 'category,hour_of_day', 'mode' 'overwrite');

INSERT INTO user_totals
SELECT e.user_id,
       count(*)                                                          AS events,
       count(*) FILTER (WHERE e.event_type = 'purchase')                 AS purchases,
       sum(CASE WHEN e.event_type = 'purchase' THEN i.price ELSE 0 END)  AS revenue,
       avg(e.dwell_ms)                                                   AS avg_dwell_ms,
       min(e.event_time)                                                 AS first_seen,
       max(e.event_time)                                                 AS last_seen
FROM events e
JOIN items i ON i.item_id = e.item_id
GROUP BY e.user_id;

INSERT INTO item_totals
SELECT item_id,
       count(*)                                          AS events,
       count(*) FILTER (WHERE event_type = 'view')       AS views,
       count(*) FILTER (WHERE event_type = 'purchase')   AS purchases,
       avg(dwell_ms)                                     AS avg_dwell_ms,
       max(event_time)                                   AS last_seen
FROM events
GROUP BY item_id;

INSERT INTO category_hourly
SELECT i.category,
       CAST(date_part('hour', e.event_time) AS BIGINT)                   AS hour_of_day,
       count(*)                                                          AS events,
       count(DISTINCT e.user_id)                                         AS users,
       sum(CASE WHEN e.event_type = 'purchase' THEN i.price ELSE 0 END)  AS revenue
FROM events e
JOIN items i ON i.item_id = e.item_id
GROUP BY i.category, CAST(date_part('hour', e.event_time) AS BIGINT);
