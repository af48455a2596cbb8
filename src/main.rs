//! The `kiln` command line: parse arguments, call the library, print.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kiln::demo::{self, DemoSize};
use kiln::engine::{Resources, parse_bytes};
use kiln::events::{Events, FailureData};
use kiln::featureset;
use kiln::functions::device::{self, DeviceChoice};
use kiln::kafka_client::{self, ClientSettings};
use kiln::ops::allocator;
use kiln::ops::logging::{self, LogFormat};
use kiln::ops::server::ListenAddr;
use kiln::ops::signals;
use kiln::pipeline::{Pipeline, Variables, parse_assignment};
use kiln::run::{self, RunOptions, StreamOptions};
use kiln::trigger::Trigger;
use kiln::{KilnError, report};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "SQL pipelines into versioned, training-ready feature sets (Delta Lake)"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    /// Where the feature functions run: `auto` uses a GPU when there is
    /// one and a batch has at least KILN_GPU_MIN_ROWS rows (65536 unless
    /// set); `gpu` uses it for every batch and fails at start-up without
    /// one; `cpu` never opens one.
    #[arg(long, global = true, value_enum, env = "KILN_DEVICE", default_value = "auto")]
    device: Device,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    Auto,
    Cpu,
    Gpu,
}

impl Device {
    fn choice(self) -> DeviceChoice {
        match self {
            Device::Auto => DeviceChoice::Auto,
            Device::Cpu => DeviceChoice::Cpu,
            Device::Gpu => DeviceChoice::Gpu,
        }
    }
}

/// Whether a command runs (or plans) SQL, and so may call the feature
/// functions.
fn runs_sql(command: &Command) -> bool {
    matches!(
        command,
        Command::Demo { .. }
            | Command::Run { .. }
            | Command::Stream { .. }
            | Command::Worker { .. }
            | Command::Check { .. }
            | Command::Explain { .. }
            | Command::TrainingSet { .. }
    )
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Make sample clickstream data in a local folder and run the sample pipelines over it.
    Demo {
        /// Folder for the data, the pipelines and the feature sets.
        #[arg(long, default_value = "kiln-demo")]
        dir: PathBuf,
        /// Number of click events to generate.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Run a pipeline once: read, transform, commit one version per feature set.
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// Set a ${NAME} variable (repeatable); wins over the environment.
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_assignment)]
        set: Vec<(String, String)>,
        /// What started this run, recorded in the lineage.
        #[arg(long, default_value = "manual")]
        trigger: String,
        /// The identity of what asked for this run: each feature set commits
        /// one run per id, so running it again does only what is left.
        #[arg(long, value_name = "ID")]
        trigger_id: Option<String>,
        /// Read at most this many Kafka records in this run, shared out over
        /// the partitions (a backfill in versions of a known size).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_records: Option<u64>,
        /// The pipeline's name in the feature sets' ledgers and lineage
        /// (default: the file name without .sql). A renamed or copied file
        /// keeps reading where it stopped under its old name.
        #[arg(long, value_name = "NAME", value_parser = parse_pipeline_name)]
        pipeline: Option<String>,
        #[command(flatten)]
        events: EventArgs,
        /// Serve /metrics, /healthz and /readyz on HOST:PORT while the run lasts.
        #[arg(long, env = "KILN_METRICS_ADDR", value_name = "HOST:PORT", default_value = "none",
              value_parser = ListenAddr::parse)]
        metrics_addr: ListenAddr,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run a pipeline with a Kafka source for ever: micro-batches, each one commit per feature set.
    ///
    /// Workers running the same pipeline share its consumer group. SIGTERM or
    /// SIGINT stops fetching, commits (or, past --shutdown-timeout, abandons)
    /// the batch in flight and exits 0.
    Stream {
        /// The pipeline file.
        file: PathBuf,
        /// Set a ${NAME} variable (repeatable); wins over the environment.
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_assignment)]
        set: Vec<(String, String)>,
        /// Close a batch at this many records (a backlog is caught up in
        /// batches this large: fewer commits, fewer small files).
        #[arg(long, default_value_t = 250_000)]
        batch_rows: usize,
        /// Close a batch at this many bytes of keys and values (e.g. 64M).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        batch_bytes: usize,
        /// Close a batch once a record in it has waited this long (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = run::parse_duration)]
        batch_interval: std::time::Duration,
        /// On SIGTERM, how long the batch in flight may take to commit before it is abandoned.
        #[arg(long, default_value = "30s", value_parser = run::parse_duration)]
        shutdown_timeout: std::time::Duration,
        /// Recorded in the lineage of every batch.
        #[arg(long, default_value = "stream")]
        trigger: String,
        /// The pipeline's name in the feature sets' ledgers, lineage and
        /// consumer group (default: the file name without .sql).
        #[arg(long, value_name = "NAME", value_parser = parse_pipeline_name)]
        pipeline: Option<String>,
        #[command(flatten)]
        events: EventArgs,
        #[command(flatten)]
        endpoints: EndpointArgs,
        /// `text`: a line per committed batch; `json`: a JSON object per line.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run pipelines when trigger messages arrive on a Kafka topic; each trigger runs once.
    ///
    /// A message is JSON: {"id": "...", "pipeline": "NAME", "set": {"VAR": "value"}}, keyed by
    /// the pipeline name (see `kiln trigger`); it runs DIR/NAME.sql. Or it is an S3 event
    /// notification: every pipeline whose incremental source covers a created object runs
    /// over the objects it names. Workers of one deployment share a consumer group. SIGTERM or SIGINT stops taking triggers, lets
    /// the runs in flight end (or, past --shutdown-timeout, abandons them) and exits 0.
    Worker {
        /// The trigger topic: kafka://TOPIC.
        #[arg(long, value_name = "kafka://TOPIC", value_parser = parse_kafka_topic)]
        triggers: String,
        /// The folder of pipeline files, read again for every trigger.
        #[arg(long, value_name = "DIR")]
        pipelines: PathBuf,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Pipelines run at once by this worker (never two of one pipeline).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        concurrency: u64,
        /// On SIGTERM, or when the group moves a partition away, how long the
        /// runs in flight may take to end before they are abandoned uncommitted.
        #[arg(long, default_value = "30s", value_parser = run::parse_duration)]
        shutdown_timeout: std::time::Duration,
        /// Announce every new version and every failed trigger as a
        /// CloudEvent on this topic (the same brokers and settings).
        #[arg(long, value_name = "kafka://TOPIC", value_parser = parse_kafka_topic)]
        events: Option<String>,
        #[command(flatten)]
        endpoints: EndpointArgs,
        /// `text`: a line per trigger; `json`: a JSON object per line.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Send one trigger message for `kiln worker`; prints its id.
    Trigger {
        /// The pipeline to run: its file name in the worker's folder, without .sql.
        #[arg(value_parser = parse_pipeline_name)]
        pipeline: String,
        /// Set a ${NAME} variable of the run (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_assignment)]
        set: Vec<(String, String)>,
        /// The trigger topic (TOPIC or kafka://TOPIC).
        #[arg(long, value_parser = parse_kafka_topic)]
        topic: String,
        /// The trigger's id (default: a new UUID); sending an id again runs nothing twice.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Parse and plan pipelines without reading data or writing anything.
    Check {
        /// Pipeline files or folders of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Set a ${NAME} variable (repeatable); wins over the environment.
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_assignment)]
        set: Vec<(String, String)>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show the plan of each INSERT, after kiln's rewrites; --analyze runs the queries (commits nothing).
    Explain {
        /// The pipeline file.
        file: PathBuf,
        /// Set a ${NAME} variable (repeatable); wins over the environment.
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_assignment)]
        set: Vec<(String, String)>,
        /// Run the queries and show each operator's rows, time and memory.
        #[arg(long)]
        analyze: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List the versions of a feature set.
    Versions {
        /// The feature set's location: a path, file://, s3:// or gs:// URL.
        url: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Wait for a feature set's next version, or for the commit of one
    /// trigger; prints the version. Exits 3 when the timeout passes first.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["after_version", "for_trigger"]))]
    Wait {
        /// The feature set's location (it may not exist yet).
        url: String,
        /// Return once there is a version newer than N.
        #[arg(long, value_name = "N")]
        after_version: Option<u64>,
        /// Return once a commit's lineage names this trigger (`kiln run --trigger ID`).
        #[arg(long, value_name = "ID")]
        for_trigger: Option<String>,
        /// Give up after this long (`30s`, `10m`); no limit by default.
        #[arg(long, value_parser = run::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// How often to look for the next commit.
        #[arg(long, value_parser = run::parse_duration, default_value = "1s")]
        poll_interval: std::time::Duration,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Build a point-in-time training set: each label row with, from each feature set, the latest
    /// row of its entity from before the label's time. Commits it as a new version at --out.
    ///
    /// --feature-time, --prefix and --entity-map apply to the --features before them.
    TrainingSet {
        /// The labels: Parquet, CSV or JSON files (a file, folder or glob; s3:// and gs:// too),
        /// or a feature set (LOCATION or LOCATION@VERSION).
        #[arg(long, value_name = "URL")]
        labels: String,
        /// The labels' file format (default: from the file names).
        #[arg(long, value_enum, value_name = "FORMAT")]
        labels_format: Option<kiln::training::LabelFormat>,
        /// The entity key column(s) of the labels.
        #[arg(long, value_name = "COL[,COL...]", value_delimiter = ',', required = true)]
        entity: Vec<String>,
        /// The labels' time column (TIMESTAMP, DATE or ISO 8601 strings).
        #[arg(long, value_name = "COL")]
        label_time: String,
        /// A feature set to join, pinned (URL@VERSION) or at its latest version (resolved once).
        #[arg(long, value_name = "URL[@VERSION]", required = true)]
        features: Vec<String>,
        /// The time column of the --features before it (default: its declared timestamp).
        #[arg(long, value_name = "COL")]
        feature_time: Vec<String>,
        /// Put before every column name of the --features before it.
        #[arg(long, value_name = "PFX")]
        prefix: Vec<String>,
        /// Label entity column → column of the --features before it, where the names differ.
        #[arg(long, value_name = "LABELCOL=FEATURECOL,...", value_delimiter = ',')]
        entity_map: Vec<String>,
        /// Match feature rows at the label's time too (default: strictly before it).
        #[arg(long)]
        inclusive: bool,
        /// Ignore a feature row older than this at the label's time (`7d`, `12h`).
        #[arg(long, value_name = "DURATION", value_parser = run::parse_duration)]
        max_age: Option<std::time::Duration>,
        /// Where the training set is committed (a new location or an earlier training set).
        #[arg(long, value_name = "URL")]
        out: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show one version of a feature set: schema, lineage and statistics.
    Show {
        /// LOCATION or LOCATION@VERSION (the latest when no version is given).
        url: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Kafka client settings, as kcat spells them. The environment sets them
/// too: KILN_KAFKA_BROKERS, and KILN_KAFKA_<PROPERTY> for any property
/// (KILN_KAFKA_SASL_PASSWORD is sasl.password); these flags win.
#[derive(clap::Args)]
struct KafkaArgs {
    /// Bootstrap brokers (default: $KILN_KAFKA_BROKERS, else localhost:9092).
    #[arg(short = 'b', long = "brokers", value_name = "BROKERS")]
    brokers: Option<String>,
    /// A librdkafka property (repeatable), e.g. -X security.protocol=SASL_SSL.
    // Parsed after clap, whose own errors repeat the argument: a password
    // given without its name must not be echoed.
    #[arg(short = 'X', value_name = "PROPERTY=VALUE")]
    properties: Vec<String>,
}

impl KafkaArgs {
    fn settings(&self) -> Result<ClientSettings, String> {
        let properties = self
            .properties
            .iter()
            .map(|p| kafka_client::parse_property(p).map_err(|e| format!("-X: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientSettings::from_env(self.brokers.as_deref(), &properties))
    }
}

/// The operations endpoints of a long-running command.
#[derive(clap::Args)]
struct EndpointArgs {
    /// Serve /metrics, /healthz and /readyz on HOST:PORT (`none`: do not).
    #[arg(long, env = "KILN_METRICS_ADDR", value_name = "HOST:PORT",
          default_value = kiln::ops::server::DEFAULT_ADDR, value_parser = ListenAddr::parse)]
    metrics_addr: ListenAddr,
}

/// `--events kafka://TOPIC` for `run` and `stream`, with the Kafka settings
/// of its producer (as kcat spells them; the environment's KILN_KAFKA_*
/// too).
#[derive(clap::Args)]
struct EventArgs {
    /// Announce every new version and every failed run as a CloudEvent on this topic.
    #[arg(long = "events", value_name = "kafka://TOPIC", value_parser = parse_kafka_topic)]
    topic: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
}

/// Announce a run that failed, when events are on.
async fn announce_failure(
    events: &Option<Events>,
    e: &KilnError,
    pipeline: String,
    trigger: &str,
    trigger_id: Option<String>,
) {
    if let Some(events) = events {
        events
            .failed(FailureData {
                reason: e.one_line(),
                pipeline: Some(pipeline),
                run_id: None,
                trigger: trigger.to_string(),
                trigger_id,
                message: None,
            })
            .await;
    }
}

/// The feature sets a pipeline writes: (name, location).
fn feature_sets(pipeline: &Pipeline) -> Vec<(String, String)> {
    pipeline
        .feature_sets()
        .map(|(_, d)| (d.name.clone(), d.location.clone()))
        .collect()
}

/// The name a pipeline file runs under.
fn pipeline_name(file: &std::path::Path, name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| kiln::pipeline::name_of(file))
}

fn parse_kafka_topic(text: &str) -> Result<String, String> {
    let topic = text.strip_prefix("kafka://").unwrap_or(text);
    if topic.is_empty() || topic.contains('/') || topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{text}' is not a topic: write it like kafka://triggers"));
    }
    Ok(topic.to_string())
}

/// `kiln wait`'s exit status when its timeout passes.
const TIMED_OUT: u8 = 3;

fn parse_size(text: &str) -> Result<usize, String> {
    parse_bytes(text)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{text}' is not a size: write it like 65536, 64M or 1G"))
}

fn parse_pipeline_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('/') || text.chars().any(char::is_control) {
        return Err(format!(
            "'{text}' is not a pipeline name: give a file name without '/'"
        ));
    }
    Ok(text.to_string())
}

/// Load a pipeline file, under another name if one was given.
fn load(
    file: &std::path::Path,
    set: Vec<(String, String)>,
    name: Option<String>,
) -> Result<Pipeline, Vec<kiln::pipeline::Problem>> {
    let mut pipeline = Pipeline::load(file, &variables(set))?;
    if let Some(name) = name {
        pipeline.name = name;
    }
    Ok(pipeline)
}

fn variables(set: Vec<(String, String)>) -> Variables {
    Variables::from_env(set.into_iter().collect::<BTreeMap<_, _>>())
}

fn emit<T: serde::Serialize>(output: Output, value: &T, text: impl FnOnce(&T) -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("results serialize")
        ),
        Output::Text => print!("{}", text(value)),
    }
}

/// The feature sets of `kiln training-set`, each with the flags that follow
/// its --features on the command line.
fn training_features(matches: &clap::ArgMatches) -> Result<Vec<kiln::training::FeaturesSpec>, String> {
    use kiln::training::FeaturesFlag;
    let Some(sub) = matches.subcommand_matches("training-set") else {
        return Ok(Vec::new());
    };
    let mut flags = Vec::new();
    let mut gather = |id: &str, make: fn(String) -> FeaturesFlag| {
        if let (Some(values), Some(at)) = (sub.get_many::<String>(id), sub.indices_of(id)) {
            flags.extend(at.zip(values.map(|v| make(v.clone()))));
        }
    };
    gather("features", FeaturesFlag::Features);
    gather("feature_time", FeaturesFlag::Time);
    gather("prefix", FeaturesFlag::Prefix);
    gather("entity_map", FeaturesFlag::EntityMap);
    kiln::training::features_specs(flags)
}

async fn execute(
    command: Command,
    features: Vec<kiln::training::FeaturesSpec>,
) -> Result<ExitCode, KilnError> {
    let resources = Resources::detect();
    match command {
        Command::Demo { dir, events } => {
            if events < 1000 {
                return Err(KilnError::Usage("--events must be at least 1000".into()));
            }
            let options = RunOptions {
                trigger: "demo".into(),
                trigger_id: None,
                events: None,
                objects: None,
                progress: true,
                resources,
                max_records: None,
            };
            let report = demo::run_demo(&dir, DemoSize { events }, &options).await?;
            print!("{}", demo_text(&report));
        }
        Command::Run {
            file,
            set,
            trigger,
            trigger_id,
            max_records,
            pipeline,
            events,
            metrics_addr,
            output,
        } => {
            let _endpoints = metrics_addr.serve().await?;
            let events = Events::to_kafka(
                &events.kafka.settings().map_err(KilnError::Usage)?,
                events.topic.as_deref(),
            )?;
            let name = pipeline_name(&file, &pipeline);
            let options = RunOptions {
                trigger,
                trigger_id,
                progress: output == Output::Text,
                resources,
                max_records,
                events: events.clone(),
                objects: None,
            };
            let ran = match load(&file, set, pipeline) {
                Ok(pipeline) => {
                    if let Some(events) = &events {
                        events.catch_up(&pipeline.name, &feature_sets(&pipeline)).await;
                    }
                    run::run_pipeline(&pipeline, &options).await
                }
                Err(problems) => Err(KilnError::Problems(problems)),
            };
            match ran {
                Ok(summary) => emit(output, &summary, report::run_summary),
                Err(e) => {
                    announce_failure(&events, &e, name, &options.trigger, options.trigger_id.clone()).await;
                    return Err(e);
                }
            }
        }
        Command::Stream {
            file,
            set,
            batch_rows,
            batch_bytes,
            batch_interval,
            shutdown_timeout,
            trigger,
            pipeline,
            events,
            endpoints,
            output,
        } => {
            let _endpoints = endpoints.metrics_addr.serve().await?;
            if !allocator::tune_for_reuse() {
                tracing::debug!("allocator thresholds left at their defaults");
            }
            let events = Events::to_kafka(
                &events.kafka.settings().map_err(KilnError::Usage)?,
                events.topic.as_deref(),
            )?;
            let name = pipeline_name(&file, &pipeline);
            let pipeline = match load(&file, set, pipeline) {
                Ok(p) => p,
                Err(problems) => {
                    let e = KilnError::Problems(problems);
                    announce_failure(&events, &e, name, &trigger, None).await;
                    return Err(e);
                }
            };
            if let Some(events) = &events {
                events.catch_up(&pipeline.name, &feature_sets(&pipeline)).await;
            }
            let options = StreamOptions {
                batch_rows,
                batch_bytes,
                batch_interval,
                shutdown_timeout,
                run: RunOptions {
                    trigger: trigger.clone(),
                    trigger_id: None,
                    progress: false,
                    resources,
                    max_records: None,
                    events: events.clone(),
                    objects: None,
                },
            };
            let on_batch = |s: &run::RunSummary| match output {
                Output::Json => println!("{}", serde_json::to_string(s).expect("results serialize")),
                Output::Text => print!("{}", report::batch_line(s)),
            };
            match run::stream_pipeline(&pipeline, &options, &on_batch).await {
                Ok(summary) => emit(output, &summary, report::stream_summary),
                Err(e) => {
                    announce_failure(&events, &e, name, &trigger, None).await;
                    return Err(e);
                }
            }
        }
        Command::Worker {
            triggers,
            pipelines,
            kafka,
            concurrency,
            shutdown_timeout,
            events,
            endpoints,
            output,
        } => {
            let _endpoints = endpoints.metrics_addr.serve().await?;
            let options = run::WorkerOptions {
                topic: triggers,
                pipelines,
                client: kafka.settings().map_err(KilnError::Usage)?,
                concurrency: concurrency as usize,
                shutdown_timeout,
                resources,
                events: Events::to_kafka(&kafka.settings().map_err(KilnError::Usage)?, events.as_deref())?,
            };
            let on_trigger = |r: &run::TriggerReport| match output {
                Output::Json => println!("{}", serde_json::to_string(r).expect("results serialize")),
                Output::Text => print!("{}", report::trigger_line(r)),
            };
            let summary = run::run_worker(&options, &on_trigger).await?;
            emit(output, &summary, report::worker_summary);
        }
        Command::Trigger {
            pipeline,
            set,
            topic,
            id,
            kafka,
            output,
        } => {
            let trigger = Trigger::new(&pipeline, set.into_iter().collect(), id);
            let sent =
                kiln::trigger::send(&kafka.settings().map_err(KilnError::Usage)?, &topic, &trigger).await?;
            emit(output, &sent, |s| format!("{}\n", s.id));
        }
        Command::Check { paths, set, output } => {
            let result = run::check_paths(&paths, &variables(set), &resources).await?;
            emit(output, &result, report::check_report);
            if !result.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Explain {
            file,
            set,
            analyze,
            output,
        } => {
            let pipeline = Pipeline::load(&file, &variables(set))?;
            let plans = run::explain_pipeline(&pipeline, analyze, &resources).await?;
            emit(output, &plans, |p| report::explain(p));
        }
        Command::Versions { url, output } => {
            let table = featureset::open_existing(&url, None).await?;
            let list = featureset::versions(&table).await?;
            emit(output, &list, |l| report::versions(l));
        }
        Command::Wait {
            url,
            after_version,
            for_trigger,
            timeout,
            poll_interval,
            output,
        } => {
            let wanted = match (after_version, for_trigger) {
                (Some(n), _) => featureset::Wanted::After(n),
                (None, Some(id)) => featureset::Wanted::Trigger(id),
                (None, None) => unreachable!("clap requires one of them"),
            };
            match featureset::wait(&url, &wanted, timeout, poll_interval).await? {
                Some(arrived) => emit(output, &arrived, |a| format!("{}\n", a.version)),
                None => {
                    eprintln!("error: timed out waiting for '{url}'");
                    return Ok(ExitCode::from(TIMED_OUT));
                }
            }
        }
        Command::TrainingSet {
            labels,
            labels_format,
            entity,
            label_time,
            inclusive,
            max_age,
            out,
            output,
            ..
        } => {
            if !allocator::tune_for_reuse() {
                tracing::debug!("allocator thresholds left at their defaults");
            }
            let request = kiln::training::TrainingSetRequest {
                labels: kiln::training::LabelSource::resolve(&labels, labels_format).await?,
                entity,
                label_time,
                features,
                inclusive,
                max_age,
                out,
            };
            let summary = kiln::training::build_training_set(&request, &resources).await?;
            emit(output, &summary, report::training_set);
        }
        Command::Show { url, output } => {
            let (location, version) = featureset::split_version(&url);
            let table = featureset::open_existing(&location, version).await?;
            let detail = featureset::version_detail(&table, &location).await?;
            emit(output, &detail, report::version_detail);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn demo_text(report: &demo::DemoReport) -> String {
    let dir = report.dir.display();
    let mut out = match &report.generated {
        Some(d) => format!(
            "made {} events, {} users, {} items ({} Parquet files) in {dir}/raw\n",
            d.events, d.users, d.items, d.files
        ),
        None => format!("reusing the sample data in {dir}/raw\n"),
    };
    for s in &report.runs {
        out.push_str(&report::run_summary(s));
    }
    if let Some((version, l)) = &report.lineage {
        out.push_str(&format!(
            "\nlineage of user_daily version {version}, from its Delta log: pipeline {}, sql sha256 {}, \
             {} input files, {} rows, {} columns with statistics, run {}\n",
            l.pipeline,
            &l.sql_sha256[..12],
            l.inputs.len(),
            l.rows_written,
            l.columns.len(),
            l.run_id
        ));
    }
    out.push_str(&format!(
        "\nthe pipelines are in {dir}/pipelines, the feature sets in {dir}/features\n\
         look at one:   kiln show {dir}/features/user_daily\n\
         all versions:  kiln versions {dir}/features/user_daily\n\
         read it from Python (pip install deltalake pandas):\n\
         \x20   from deltalake import DeltaTable\n\
         \x20   t = DeltaTable(\"{dir}/features/user_daily\")\n\
         \x20   print(t.version(), t.to_pandas().head())\n"
    ));
    out
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let features = match training_features(&matches) {
        Ok(features) => features,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    kiln::asof::size_polars_threads();
    logging::init(cli.log_format);
    if runs_sql(&cli.command)
        && let Err(e) = device::configure(cli.device.choice())
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // Test builds only (the `failpoints` feature): FAILPOINTS=name=action.
    let _failpoints = fail::FailScenario::setup();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `stream` and `worker` finish or abandon what is in flight on SIGTERM
    // and SIGINT themselves; every other command stops at once (a commit
    // is all or nothing, so nothing half-written stays behind).
    let handles_signals = matches!(cli.command, Command::Stream { .. } | Command::Worker { .. });
    let outcome = runtime.block_on(async {
        signals::listen();
        if handles_signals {
            return execute(cli.command, features).await;
        }
        tokio::select! {
            done = execute(cli.command, features) => done,
            stop = signals::stop_requested() => {
                eprintln!(
                    "error: stopped by {}: versions committed before it stay; the rest was not committed",
                    stop.name()
                );
                std::process::exit(i32::from(stop.exit_status()));
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(KilnError::Problems(problems)) => {
            for p in problems {
                eprintln!("{p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", e.one_line());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use kiln::featureset::split_version;

    #[test]
    fn version_suffix() {
        assert_eq!(split_version("s3://b/fs@12"), ("s3://b/fs".into(), Some(12)));
        assert_eq!(split_version("/data/a@b/fs"), ("/data/a@b/fs".into(), None));
        assert_eq!(split_version("fs"), ("fs".into(), None));
    }
}
