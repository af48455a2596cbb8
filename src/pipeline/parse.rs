//! Splitting a pipeline into statements and sorting them into the three
//! kinds kiln runs: sources, feature sets (sinks) and inserts.
//!
//! Statements are parsed one at a time so that one syntax error does not
//! hide the problems in the others. Each is parsed from text padded with
//! blanks up to its real start, so the parser's line and column numbers are
//! positions in the whole file.

use datafusion::sql::parser::{CreateExternalTable, DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{ObjectName, Query, Statement as SqlStatement, TableObject};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::Statement;
use super::options::{FeatureSetOptions, KafkaFormat, KafkaOptions, SourceOptions};
use super::problem::Problem;
use super::vars::SourceMap;

/// The file formats a source may be stored as.
pub const SOURCE_FORMATS: &[&str] = &["PARQUET", "CSV", "JSON", "ARROW"];
/// The URL schemes a source or feature set may live at.
pub const URL_SCHEMES: &[&str] = &["file", "s3", "gs"];

#[derive(Debug, Clone)]
pub enum StatementKind {
    /// `CREATE EXTERNAL TABLE ... STORED AS PARQUET|CSV|JSON|ARROW`.
    Source(SourceDecl),
    /// `CREATE EXTERNAL TABLE ... STORED AS JSON|CSV|BYTES LOCATION 'kafka://...'`.
    Kafka(KafkaSourceDecl),
    /// `CREATE EXTERNAL TABLE ... STORED AS FEATURES`.
    FeatureSet(FeatureSetDecl),
    /// `CREATE VIEW`: a named intermediate query, planned by DataFusion.
    View(Box<SqlStatement>),
    /// `INSERT INTO <feature set> SELECT ...`.
    Insert(InsertDecl),
}

#[derive(Debug, Clone)]
pub struct SourceDecl {
    pub name: String,
    pub location: String,
    /// The declaration with kiln's own options removed, for DataFusion.
    pub create: CreateExternalTable,
    pub options: SourceOptions,
}

#[derive(Debug, Clone)]
pub struct KafkaSourceDecl {
    pub name: String,
    pub location: String,
    pub topics: Vec<String>,
    pub format: KafkaFormat,
    /// The declaration without its options: DataFusion plans it for the
    /// declared schema.
    pub create: CreateExternalTable,
    pub options: KafkaOptions,
}

#[derive(Debug, Clone)]
pub struct FeatureSetDecl {
    pub name: String,
    pub location: String,
    pub options: FeatureSetOptions,
}

#[derive(Debug, Clone)]
pub struct InsertDecl {
    pub target: String,
    /// Column names given after the target, if any.
    pub columns: Vec<String>,
    pub query: Box<Query>,
}

/// A table name as DataFusion sees it: unquoted parts lower-cased.
pub fn normalize_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(id) if id.quote_style.is_none() => id.value.to_lowercase(),
            Some(id) => id.value.clone(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Parse all statements of a substituted pipeline text.
pub fn parse_statements(file: &str, text: &str, map: &SourceMap) -> Result<Vec<Statement>, Vec<Problem>> {
    let at = |line: u64, column: u64, msg: String| Problem::at(file, map.to_original(line, column), msg);
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| vec![at(e.location.line, e.location.column, e.message.clone())])?;

    let char_offsets = CharOffsets::new(text);
    let mut problems = Vec::new();
    let mut statements = Vec::new();
    for chunk in tokens.split(|t| t.token == Token::SemiColon) {
        let meaningful: Vec<TokenWithSpan> = chunk
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
            .cloned()
            .collect();
        let (Some(first), Some(last)) = (meaningful.first(), meaningful.last()) else {
            continue;
        };
        let start = char_offsets.offset(first.span.start.line, first.span.start.column);
        let end = char_offsets.offset(last.span.end.line, last.span.end.column);
        let padded = char_offsets.padded(text, start, end);
        let stmt_at = map.to_original(first.span.start.line, first.span.start.column);
        let parsed = match DFParser::parse_sql_with_dialect(&padded, &dialect) {
            Ok(mut parsed) if parsed.len() == 1 => parsed.pop_front().unwrap(),
            Ok(_) => {
                problems.push(Problem::at(file, stmt_at, "expected exactly one statement"));
                continue;
            }
            Err(e) => {
                let (msg, pos) = split_parser_location(&e.to_string());
                let p = match pos {
                    Some((l, c)) => at(l, c, msg),
                    None => Problem::at(file, stmt_at, msg),
                };
                problems.push(p);
                continue;
            }
        };
        let here = |msg: String, matches: &dyn Fn(&Token) -> bool| {
            locate(&meaningful, stmt_at, map, file, msg, matches)
        };
        match classify(parsed) {
            Ok(kind) => statements.push(Statement {
                at: stmt_at,
                kind,
                tokens: meaningful.clone(),
            }),
            Err((anchor, msg)) => problems.push(match anchor {
                Anchor::Statement => Problem::at(file, stmt_at, msg),
                Anchor::Option(key) => here(
                    msg,
                    &|t| matches!(t, Token::SingleQuotedString(s) if s.eq_ignore_ascii_case(&key)),
                ),
                Anchor::Location(loc) => {
                    here(msg, &|t| matches!(t, Token::SingleQuotedString(s) if *s == loc))
                }
                Anchor::Word(w) => here(
                    msg,
                    &|t| matches!(t, Token::Word(word) if word.value.eq_ignore_ascii_case(&w)),
                ),
            }),
        }
    }
    if statements.is_empty() && problems.is_empty() {
        problems.push(Problem::at(
            file,
            super::Position::START,
            "the pipeline has no statements: expected CREATE EXTERNAL TABLE and INSERT INTO",
        ));
    }
    if problems.is_empty() {
        check_references(file, &statements, map, &mut problems);
    }
    if problems.is_empty() {
        Ok(statements)
    } else {
        Err(problems)
    }
}

fn locate(
    tokens: &[TokenWithSpan],
    fallback: super::Position,
    map: &SourceMap,
    file: &str,
    msg: String,
    matches: &dyn Fn(&Token) -> bool,
) -> Problem {
    match tokens.iter().find(|t| matches(&t.token)) {
        Some(t) => Problem::at(file, map.to_original(t.span.start.line, t.span.start.column), msg),
        None => Problem::at(file, fallback, msg),
    }
}

/// What a classification error points at.
enum Anchor {
    Statement,
    Option(String),
    Location(String),
    Word(String),
}

fn classify(parsed: DFStatement) -> Result<StatementKind, (Anchor, String)> {
    match parsed {
        DFStatement::CreateExternalTable(create) => classify_external_table(create),
        DFStatement::Statement(stmt) => match *stmt {
            SqlStatement::Insert(insert) => {
                let TableObject::TableName(name) = &insert.table else {
                    return Err((Anchor::Statement, "INSERT INTO must name a feature set".into()));
                };
                let Some(query) = insert.source else {
                    return Err((
                        Anchor::Statement,
                        "INSERT INTO needs a query: INSERT INTO <feature set> SELECT ...".into(),
                    ));
                };
                Ok(StatementKind::Insert(InsertDecl {
                    target: normalize_name(name),
                    columns: insert.columns.iter().map(normalize_name).collect(),
                    query,
                }))
            }
            view @ SqlStatement::CreateView(_) => Ok(StatementKind::View(Box::new(view))),
            other => Err((
                Anchor::Statement,
                format!(
                    "unsupported statement '{}': a pipeline holds CREATE EXTERNAL TABLE, \
                     CREATE VIEW and INSERT INTO statements",
                    first_words(&other.to_string())
                ),
            )),
        },
        other => Err((
            Anchor::Statement,
            format!(
                "unsupported statement '{}': a pipeline holds CREATE EXTERNAL TABLE, \
                 CREATE VIEW and INSERT INTO statements",
                first_words(&other.to_string())
            ),
        )),
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn classify_external_table(mut create: CreateExternalTable) -> Result<StatementKind, (Anchor, String)> {
    let name = normalize_name(&create.name);
    let location = match create.locations.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err((
                Anchor::Statement,
                format!("table '{name}' must have exactly one LOCATION"),
            ));
        }
    };
    check_scheme(&location).map_err(|m| (Anchor::Location(location.clone()), m))?;
    let format = create.file_type.to_uppercase();
    if format == "FEATURES" {
        if !create.columns.is_empty() {
            return Err((
                Anchor::Statement,
                format!("feature set '{name}' takes its columns from the query: remove the column list"),
            ));
        }
        let options =
            FeatureSetOptions::parse(&create.options).map_err(|(key, msg)| (Anchor::Option(key), msg))?;
        return Ok(StatementKind::FeatureSet(FeatureSetDecl {
            name,
            location,
            options,
        }));
    }
    if let Some(topics) = location.strip_prefix("kafka://") {
        let topics = kafka_topics(topics).map_err(|m| (Anchor::Location(location.clone()), m))?;
        let format = KafkaFormat::parse(&create.file_type).ok_or_else(|| {
            (
                Anchor::Word(create.file_type.clone()),
                format!(
                    "unsupported format '{}' for a Kafka source: STORED AS {}",
                    create.file_type,
                    KafkaFormat::NAMES.join(", ")
                ),
            )
        })?;
        let options =
            KafkaOptions::parse(&create.options).map_err(|(key, msg)| (Anchor::Option(key), msg))?;
        create.options.clear();
        return Ok(StatementKind::Kafka(KafkaSourceDecl {
            name,
            location,
            topics,
            format,
            create,
            options,
        }));
    }
    if !SOURCE_FORMATS.contains(&format.as_str()) {
        return Err((
            Anchor::Word(create.file_type.clone()),
            format!(
                "unsupported format '{}': sources are STORED AS {}, feature sets STORED AS FEATURES",
                create.file_type,
                SOURCE_FORMATS.join(", ")
            ),
        ));
    }
    let (options, rest) =
        SourceOptions::parse(&create.options).map_err(|(key, msg)| (Anchor::Option(key), msg))?;
    create.options = rest;
    Ok(StatementKind::Source(SourceDecl {
        name,
        location,
        create,
        options,
    }))
}

/// The topics of `kafka://a,b`.
fn kafka_topics(list: &str) -> Result<Vec<String>, String> {
    let topics: Vec<String> = list.split(',').map(|t| t.trim().to_string()).collect();
    for topic in &topics {
        let legal = !topic.is_empty()
            && topic.len() <= 249
            && topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !legal {
            return Err(format!(
                "'{topic}' is not a Kafka topic name (letters, digits, '.', '_' and '-'; \
                 several topics are separated by commas: kafka://a,b)"
            ));
        }
    }
    Ok(topics)
}

/// Refuse URL schemes kiln cannot read or write before anything runs.
pub fn check_scheme(location: &str) -> Result<(), String> {
    match location.split_once("://") {
        None => Ok(()),
        Some(("kafka", _)) => Ok(()),
        Some((scheme, _)) if URL_SCHEMES.contains(&scheme.to_lowercase().as_str()) => Ok(()),
        Some((scheme, _)) => Err(format!(
            "unsupported URL scheme '{scheme}://' in '{location}': use a path, {}",
            URL_SCHEMES
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Checks across statements: names declared once, inserts into declared
/// feature sets that have a key.
fn check_references(file: &str, statements: &[Statement], map: &SourceMap, problems: &mut Vec<Problem>) {
    let mut declared: Vec<&str> = Vec::new();
    for stmt in statements {
        let name = match &stmt.kind {
            StatementKind::Source(d) => &d.name,
            StatementKind::Kafka(d) => &d.name,
            StatementKind::FeatureSet(d) => &d.name,
            _ => continue,
        };
        if declared.contains(&name.as_str()) {
            problems.push(Problem::at(
                file,
                stmt.at,
                format!("table '{name}' is declared twice"),
            ));
        }
        declared.push(name);
    }
    for stmt in statements {
        let StatementKind::Insert(insert) = &stmt.kind else {
            continue;
        };
        let target = statements.iter().find_map(|s| match &s.kind {
            StatementKind::FeatureSet(d) if d.name == insert.target => Some((s, d)),
            _ => None,
        });
        let word = insert
            .target
            .rsplit('.')
            .next()
            .unwrap_or(&insert.target)
            .to_string();
        let here = |msg: String| {
            locate(
                &stmt.tokens,
                stmt.at,
                map,
                file,
                msg,
                &|t| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case(&word)),
            )
        };
        match target {
            None if declared.contains(&insert.target.as_str()) => problems.push(here(format!(
                "'{}' is a source, not a feature set: INSERT INTO needs a table STORED AS FEATURES",
                insert.target
            ))),
            None => problems.push(here(format!(
                "unknown feature set '{}': declare it with CREATE EXTERNAL TABLE {} STORED AS FEATURES LOCATION '...' OPTIONS ('key' '...')",
                insert.target, insert.target
            ))),
            Some((decl_stmt, decl)) if decl.options.key.is_empty() => problems.push(Problem::at(
                file,
                decl_stmt.at,
                format!(
                    "feature set '{}' has no key: add OPTIONS ('key' 'column[,column]')",
                    decl.name
                ),
            )),
            Some(_) => {}
        }
    }
}

/// sqlparser appends " at Line: L, Column: C" to its messages.
fn split_parser_location(message: &str) -> (String, Option<(u64, u64)>) {
    let Some(idx) = message.rfind(" at Line: ") else {
        return (message.to_string(), None);
    };
    let tail = &message[idx + " at Line: ".len()..];
    let parsed = tail.split_once(", Column: ").and_then(|(l, c)| {
        let c: String = c.chars().take_while(|ch| ch.is_ascii_digit()).collect();
        Some((l.trim().parse().ok()?, c.parse().ok()?))
    });
    let msg = message[..idx]
        .trim_start_matches("SQL error: ")
        .trim_start_matches("ParserError(\"")
        .trim_start_matches("sql parser error: ")
        .to_string();
    (msg, parsed)
}

/// Char offsets of (line, column) positions in a text.
struct CharOffsets {
    line_starts: Vec<usize>,
}

impl CharOffsets {
    fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        for (i, c) in text.chars().enumerate() {
            if c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Self { line_starts }
    }

    fn offset(&self, line: u64, column: u64) -> usize {
        let idx = (line.max(1) as usize - 1).min(self.line_starts.len() - 1);
        self.line_starts[idx] + column.max(1) as usize - 1
    }

    /// `text[start..end]` (in chars) preceded by blanks that keep every
    /// line break, so positions inside it are positions in `text`.
    fn padded(&self, text: &str, start: usize, end: usize) -> String {
        text.chars()
            .enumerate()
            .take(end)
            .map(|(i, c)| if i >= start || c == '\n' { c } else { ' ' })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Pipeline, Variables};

    fn load(text: &str) -> Result<Pipeline, Vec<Problem>> {
        Pipeline::from_text("p.sql", text, &Variables::only(Default::default()))
    }

    fn problems(text: &str) -> Vec<String> {
        load(text).unwrap_err().iter().map(|p| p.to_string()).collect()
    }

    const GOOD: &str = "-- a comment\n\
        CREATE EXTERNAL TABLE ev (id BIGINT NOT NULL, v DOUBLE)\n  STORED AS PARQUET LOCATION 'data/ev/';\n\
        CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs'\n  OPTIONS ('key' 'id', 'mode' 'overwrite');\n\
        INSERT INTO fs SELECT id, sum(v) AS total FROM ev GROUP BY id;\n";

    #[test]
    fn sorts_statements_into_kinds() {
        let p = load(GOOD).unwrap();
        assert_eq!(p.name, "p");
        assert_eq!(p.sources().count(), 1);
        let (stmt, fs) = p.feature_sets().next().unwrap();
        assert_eq!(fs.options.key, vec!["id".to_string()]);
        assert_eq!(stmt.at, crate::pipeline::Position { line: 4, column: 1 });
        let (_, ins) = p.inserts().next().unwrap();
        assert_eq!(ins.target, "fs");
        assert_eq!(p.sql_sha256.len(), 64);
    }

    #[test]
    fn syntax_errors_point_into_the_file() {
        let text = "CREATE EXTERNAL TABLE a STORED AS PARQUET LOCATION 'x';\nINSERT INTO fs SELEC 1;";
        let err = problems(text);
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].starts_with("p.sql:2:"), "{}", err[0]);
    }

    #[test]
    fn every_statement_is_checked() {
        let text = "SELEC 1;\nCREATE EXTERNAL TABLE a STORED AS AVRO LOCATION 'x';\nDROP TABLE a;";
        let err = problems(text);
        assert_eq!(err.len(), 3, "{err:?}");
        assert!(
            err[1].starts_with("p.sql:2:35: unsupported format 'AVRO'"),
            "{}",
            err[1]
        );
        assert!(
            err[2].contains("unsupported statement 'DROP TABLE'"),
            "{}",
            err[2]
        );
    }

    #[test]
    fn sink_without_key_and_unknown_target() {
        let text = "CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'o';\n\
                    INSERT INTO fs SELECT 1 AS a;\nINSERT INTO nope SELECT 1 AS a;";
        let err = problems(text);
        assert!(
            err.iter()
                .any(|e| e.starts_with("p.sql:1:1: feature set 'fs' has no key")),
            "{err:?}"
        );
        assert!(
            err.iter()
                .any(|e| e.starts_with("p.sql:3:13: unknown feature set 'nope'")),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_option_and_bad_scheme_are_located() {
        let text = "CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'o'\n OPTIONS ('key' 'a', 'colour' 'red');\n\
                    CREATE EXTERNAL TABLE s STORED AS CSV LOCATION 'ftp://h/x';";
        let err = problems(text);
        assert!(
            err[0].starts_with("p.sql:2:22: unknown option 'colour'"),
            "{}",
            err[0]
        );
        assert!(
            err[1].starts_with("p.sql:3:48: unsupported URL scheme 'ftp://'"),
            "{}",
            err[1]
        );
    }

    #[test]
    fn parser_location_suffix_is_split_off() {
        let (msg, at) =
            split_parser_location("SQL error: ParserError(\"Expected: x, found: y at Line: 3, Column: 14\")");
        assert_eq!(at, Some((3, 14)));
        assert!(msg.starts_with("Expected: x"));
    }
}
