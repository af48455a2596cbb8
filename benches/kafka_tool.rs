//! The Kafka side of `benches/stream_bench.py`:
//!
//! ```text
//! kafka_tool produce  BROKERS TOPIC EVENTS [PARTITIONS] [RATE]   create the topic (if PARTITIONS), produce
//!                                                                 EVENTS clickstream records (RATE per second, or flat out)
//! kafka_tool ceiling  BROKERS TOPIC [EVENTS]                      the ceiling: a bare consumer reads the topic to its
//!                                                                 high watermark (or EVENTS records) and decodes every
//!                                                                 value with arrow's JSON decoder (no pipeline, no commit)
//! ```
//!
//! Both print one JSON object. Run through `cargo bench --bench kafka_tool -- ...`.
//! `KILN_BENCH_CLIENT='key=value,...'` adds client properties to the ceiling's
//! consumer (to try fetch settings).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The columns of a clickstream record, as the bench pipeline declares them.
fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, true),
        Field::new("event_type", DataType::Utf8, true),
        Field::new("dwell_ms", DataType::Float64, true),
        Field::new("sent_ms", DataType::Int64, true),
    ]))
}

const EVENT_TYPES: [&str; 4] = ["view", "click", "add_to_cart", "purchase"];

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn produce(brokers: &str, topic: &str, events: u64, partitions: Option<i32>, rate: Option<f64>) {
    if let Some(partitions) = partitions {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin client");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for result in runtime
            .block_on(admin.create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ))
            .expect("create_topics")
        {
            result.expect("topic created");
        }
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", if rate.is_some() { "5" } else { "50" })
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let first_id = now_ms() * 1000;
    let mut bytes = 0u64;
    for i in 0..events {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let id = first_id + i as i64;
        let value = format!(
            r#"{{"event_id": {id}, "user_id": {}, "item_id": {}, "event_type": "{}", "dwell_ms": {}.{}, "sent_ms": {}}}"#,
            (i * 7919) % 100_000,
            (i * 104_729) % 50_000,
            EVENT_TYPES[(i % 4) as usize],
            (i * 31) % 60_000,
            i % 10,
            now_ms()
        );
        bytes += value.len() as u64;
        let mut record: BaseRecord<'_, (), str> = BaseRecord::to(topic).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"events": events, "bytes": bytes, "seconds": seconds, "events_per_s": events as f64 / seconds})
    );
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU seconds (user and system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime, in clock ticks of 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// `events`: stop after that many records instead of at the high
/// watermarks (tansu reports wrong ones).
fn ceiling(brokers: &str, topic: &str, events_wanted: Option<i64>) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "kiln-bench-ceiling")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // noida-db answers a fetch with everything after the asked offset.
        .set("receive.message.max.bytes", "2147483647");
    // KILN_BENCH_CLIENT='key=value,...': client properties to try.
    for pair in std::env::var("KILN_BENCH_CLIENT").unwrap_or_default().split(',') {
        if let Some((key, value)) = pair.split_once('=') {
            config.set(key.trim(), value.trim());
        }
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(30))
            .expect("watermarks");
        ends.insert(*p, high);
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    let total: i64 = events_wanted.unwrap_or_else(|| ends.values().sum());
    let start = Instant::now();
    let cpu_before = cpu_seconds();
    consumer.assign(&tpl).expect("assign");
    let schema = schema();
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(8192)
        .build_decoder()
        .expect("decoder");
    let (mut events, mut rows, mut pending) = (0i64, 0usize, 0usize);
    let mut done = std::collections::HashSet::new();
    let finished = |done: &std::collections::HashSet<i32>, events: i64| match events_wanted {
        Some(n) => events >= n,
        None => done.len() == partitions.len(),
    };
    while !finished(&done, events) {
        // noida-db answers a fetch with the whole rest of the partition,
        // which takes a while to arrive for millions of records.
        let Some(message) = consumer.poll(Duration::from_secs(300)) else {
            panic!("no record for 300 s after {events} of {total}");
        };
        let message = message.expect("fetch");
        events += 1;
        if let Some(value) = message.payload() {
            decoder.decode(value).expect("decode");
            pending += 1;
            if pending == 8192 {
                rows += decoder.flush().expect("flush").map_or(0, |b| b.num_rows());
                pending = 0;
            }
        }
        if message.offset() + 1 >= ends[&message.partition()] {
            done.insert(message.partition());
        }
    }
    rows += decoder.flush().expect("flush").map_or(0, |b| b.num_rows());
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": events, "rows": rows, "seconds": seconds,
            "events_per_s": events as f64 / seconds, "peak_rss_mib": peak_rss_mib(),
            "cpu_s": cpu_seconds() - cpu_before
        })
    );
}

fn main() {
    // `cargo bench` adds `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(0), arg(1), arg(2)) {
        (Some("produce"), Some(brokers), Some(topic)) => produce(
            brokers,
            topic,
            arg(3).and_then(|n| n.parse().ok()).expect("EVENTS"),
            arg(4).and_then(|p| p.parse().ok()).filter(|p| *p > 0),
            arg(5).and_then(|r| r.parse().ok()),
        ),
        (Some("ceiling"), Some(brokers), Some(topic)) => {
            ceiling(brokers, topic, arg(3).and_then(|n| n.parse().ok()))
        }
        _ => {
            eprintln!(
                "usage: kafka_tool produce BROKERS TOPIC EVENTS [PARTITIONS] [RATE] | ceiling BROKERS TOPIC [EVENTS]"
            );
            std::process::exit(2);
        }
    }
}
