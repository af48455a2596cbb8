-- The pipeline benches/stream_bench.py measures `kiln stream` with: decode
-- JSON clickstream events, derive a few columns, commit each micro-batch.

CREATE EXTERNAL TABLE clicks (
    event_id   BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    item_id    BIGINT,
    event_type VARCHAR,
    dwell_ms   DOUBLE,
    sent_ms    BIGINT
)
STORED AS JSON
LOCATION 'kafka://${TOPIC}'
OPTIONS ('bootstrap.servers' '${KAFKA}', 'group.id' '${GROUP}',
         -- noida-db answers a fetch with everything after the asked offset
         'receive.message.max.bytes' '2147483647',
         -- tansu holds a group join for half the session timeout
         'session.timeout.ms' '10000');

CREATE EXTERNAL TABLE click_features
STORED AS FEATURES
LOCATION '${FEATURES}/click_features'
OPTIONS ('key' 'event_id', 'timestamp' 'event_time', 'mode' 'append');

INSERT INTO click_features
SELECT event_id,
       user_id,
       item_id,
       event_type = 'purchase'           AS is_purchase,
       dwell_ms / 1000.0                 AS dwell_s,
       ln(1.0 + dwell_ms)                AS log_dwell,
       to_timestamp_millis(sent_ms)      AS event_time,
       sent_ms,
       _partition                        AS kafka_partition,
       _offset                           AS kafka_offset
FROM clicks;
