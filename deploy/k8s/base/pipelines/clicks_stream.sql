-- The stream worker's pipeline: click events from Kafka, one row each,
-- into a feature set micro-batch by micro-batch. Brokers and object store
-- come from the environment (the kiln-kafka and kiln-object-store Secrets).
CREATE EXTERNAL TABLE clicks (id VARCHAR NOT NULL, user_id BIGINT, item VARCHAR, dwell_ms DOUBLE)
STORED AS JSON
LOCATION 'kafka://${CLICKS_TOPIC:-clicks}'
OPTIONS (
  'bootstrap.servers' '${KILN_KAFKA_BROKERS}',
  'group.id' 'kiln-clicks-stream'
);

CREATE EXTERNAL TABLE clicks_seen
STORED AS FEATURES
LOCATION '${FEATURES:-s3://features}/clicks_seen'
OPTIONS ('key' 'id', 'mode' 'append');

INSERT INTO clicks_seen
SELECT id, user_id, item, dwell_ms, _partition AS kafka_partition, _offset AS kafka_offset, _timestamp AS event_time
FROM clicks;
