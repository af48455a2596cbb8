-- Each user-day's activity beside the user's own usual day: the day's
-- events and dwell time, the user's mean over all their active days, and
-- the difference. The daily aggregate is read twice (by the per-user means
-- and by the rows they are set beside); kiln computes it once.

CREATE EXTERNAL TABLE events
STORED AS PARQUET
LOCATION '${RAW:-data/raw}/events/';

CREATE EXTERNAL TABLE user_vs_usual
STORED AS FEATURES
LOCATION '${FEATURES:-data/features}/user_vs_usual'
OPTIONS ('key' 'user_id,day', 'timestamp' 'day', 'mode' 'overwrite');

INSERT INTO user_vs_usual
WITH daily AS (
    SELECT user_id,
           CAST(event_time AS DATE) AS day,
           count(*)                 AS events,
           sum(dwell_ms)            AS dwell_ms
    FROM events
    GROUP BY user_id, CAST(event_time AS DATE)
),
usual AS (
    SELECT user_id,
           avg(events)   AS usual_events,
           avg(dwell_ms) AS usual_dwell_ms,
           count(*)      AS active_days
    FROM daily
    GROUP BY user_id
)
SELECT d.user_id,
       d.day,
       d.events,
       d.dwell_ms,
       u.usual_events,
       u.active_days,
       d.events - u.usual_events     AS events_vs_usual,
       d.dwell_ms - u.usual_dwell_ms AS dwell_vs_usual
FROM daily d
JOIN usual u ON u.user_id = d.user_id;
