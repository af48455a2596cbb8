//! Reading a pipeline file: variables, statements and the checks that need
//! no data. The result, a [`Pipeline`], is what the engine plans and runs.

mod options;
mod parse;
mod problem;
mod vars;

use std::path::Path;

use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};
use sha2::{Digest, Sha256};

pub use options::{
    BadRecordLimit, FeatureSetOptions, KafkaFormat, KafkaOptions, OnDataLoss, SinkMode, SourceOptions,
    StartAt,
};
pub use parse::{FeatureSetDecl, InsertDecl, KafkaSourceDecl, SourceDecl, StatementKind};
pub use problem::{Position, Problem};
pub use vars::{SourceMap, Variables, parse_assignment};

/// One statement of a pipeline, with what is needed to point at its parts.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Where the statement starts in the original file.
    pub at: Position,
    pub kind: StatementKind,
    /// Tokens with positions in the substituted text, to locate names and
    /// options that the parser reports without a position.
    tokens: Vec<TokenWithSpan>,
}

/// A parsed pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file stem: `pipelines/user_daily.sql` is pipeline `user_daily`.
    pub name: String,
    /// The path as the user gave it, for messages.
    pub file: String,
    /// The SQL after variable substitution: what runs. It may hold secrets;
    /// never log it.
    pub sql: String,
    /// sha256 (hex) of the file's text and the values of its variables,
    /// except those in options that hold credentials (see [`secret_option`]):
    /// the lineage names the SQL that ran without letting anyone who can
    /// read the table test guesses of a password.
    pub sql_sha256: String,
    pub statements: Vec<Statement>,
    /// Every feature set the file's INSERTs write, also after
    /// [`Pipeline::only_inserts_into`] kept some of them.
    pub writes: Vec<String>,
    map: SourceMap,
}

impl Pipeline {
    /// Read, substitute and parse a pipeline file. Every problem found is
    /// returned, not only the first.
    pub fn load(path: &Path, vars: &Variables) -> Result<Self, Vec<Problem>> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem::at(
                &file,
                Position::START,
                format!("cannot read pipeline: {e}"),
            )]
        })?;
        Self::from_text(&file, &text, vars)
    }

    pub fn from_text(file: &str, text: &str, vars: &Variables) -> Result<Self, Vec<Problem>> {
        let substituted = vars::substitute(text, vars, file)?;
        let name = name_of(Path::new(file));
        let statements = parse::parse_statements(file, &substituted.text, &substituted.map)?;
        let sql_sha256 = lineage_hash(text, &substituted, &statements);
        let writes = statements
            .iter()
            .filter_map(|s| match &s.kind {
                StatementKind::Insert(i) => Some(i.target.clone()),
                _ => None,
            })
            .collect();
        Ok(Self {
            name,
            file: file.to_string(),
            sql: substituted.text,
            sql_sha256,
            statements,
            writes,
            map: substituted.map,
        })
    }

    /// A problem at the start of `stmt`.
    pub fn problem(&self, stmt: &Statement, message: impl Into<String>) -> Problem {
        Problem::at(&self.file, stmt.at, message)
    }

    /// A problem at a position reported against the substituted text.
    pub fn problem_at(&self, line: u64, column: u64, message: impl Into<String>) -> Problem {
        Problem::at(&self.file, self.map.to_original(line, column), message)
    }

    /// A problem at the first token of `stmt` that `matches`, or at the
    /// statement's start when no token does.
    pub fn problem_near(
        &self,
        stmt: &Statement,
        matches: impl Fn(&Token) -> bool,
        message: impl Into<String>,
    ) -> Problem {
        match stmt.tokens.iter().find(|t| matches(&t.token)) {
            Some(t) => self.problem_at(t.span.start.line, t.span.start.column, message),
            None => self.problem(stmt, message),
        }
    }

    /// A problem at the quoted option `key` in `stmt`'s OPTIONS.
    pub fn problem_at_option(&self, stmt: &Statement, key: &str, message: impl Into<String>) -> Problem {
        self.problem_near(
            stmt,
            |t| matches!(t, Token::SingleQuotedString(s) if s.eq_ignore_ascii_case(key)),
            message,
        )
    }

    /// A problem at the identifier `name` in `stmt` (case-insensitive).
    pub fn problem_at_word(&self, stmt: &Statement, name: &str, message: impl Into<String>) -> Problem {
        self.problem_near(
            stmt,
            |t| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case(name)),
            message,
        )
    }

    pub fn sources(&self) -> impl Iterator<Item = (&Statement, &SourceDecl)> {
        self.statements.iter().filter_map(|s| match &s.kind {
            StatementKind::Source(d) => Some((s, d)),
            _ => None,
        })
    }

    pub fn kafka_sources(&self) -> impl Iterator<Item = (&Statement, &KafkaSourceDecl)> {
        self.statements.iter().filter_map(|s| match &s.kind {
            StatementKind::Kafka(d) => Some((s, d)),
            _ => None,
        })
    }

    /// The same pipeline with only the INSERTs into `targets`: for runs that
    /// bring some feature sets level with the others.
    pub fn only_inserts_into(&self, targets: &[String]) -> Pipeline {
        let mut pipeline = self.clone();
        pipeline
            .statements
            .retain(|s| !matches!(&s.kind, StatementKind::Insert(i) if !targets.contains(&i.target)));
        pipeline
    }

    pub fn feature_sets(&self) -> impl Iterator<Item = (&Statement, &FeatureSetDecl)> {
        self.statements.iter().filter_map(|s| match &s.kind {
            StatementKind::FeatureSet(d) => Some((s, d)),
            _ => None,
        })
    }

    pub fn inserts(&self) -> impl Iterator<Item = (&Statement, &InsertDecl)> {
        self.statements.iter().filter_map(|s| match &s.kind {
            StatementKind::Insert(d) => Some((s, d)),
            _ => None,
        })
    }

    pub fn feature_set(&self, name: &str) -> Option<&FeatureSetDecl> {
        self.feature_sets()
            .map(|(_, d)| d)
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }
}

/// The name a pipeline file runs under unless `--pipeline` gives another:
/// the file name without `.sql`.
pub fn name_of(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".to_string())
}

/// Whether an option's value is a credential: its variables are left out
/// of the lineage's hash.
pub fn secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "jaas",
        "oauthbearer",
        "private",
        "key.pem",
        "access_key",
        "access.key",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// The hash of the template and of every variable's value, a secret one
/// (put in the value of an option [`secret_option`] names) as its name only.
fn lineage_hash(template: &str, substituted: &vars::Substituted, statements: &[Statement]) -> String {
    // Char ranges of secret option values in the substituted text.
    let mut secret_spans = Vec::new();
    for stmt in statements {
        let mut tokens = stmt
            .tokens
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .peekable();
        while let Some(t) = tokens.next() {
            if let Token::SingleQuotedString(key) = &t.token
                && secret_option(key)
                && let Some(value) = tokens.peek()
                && matches!(value.token, Token::SingleQuotedString(_))
            {
                let (start, end) = (value.span.start, value.span.end);
                secret_spans.push((
                    substituted.map.output_offset(start.line, start.column),
                    substituted.map.output_offset(end.line, end.column),
                ));
            }
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(template.as_bytes());
    for v in &substituted.values {
        let secret = secret_spans
            .iter()
            .any(|&(s, e)| v.start < e && s < v.end.max(v.start + 1));
        hasher.update(b"\0");
        hasher.update(v.name.as_bytes());
        if !secret {
            hasher.update(b"=");
            hasher.update(v.value.as_bytes());
        }
    }
    hex(&hasher.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const TEXT: &str = "CREATE EXTERNAL TABLE clicks (id BIGINT) STORED AS JSON LOCATION 'kafka://${TOPIC}'\n\
        OPTIONS ('bootstrap.servers' 'b:9092', 'sasl.username' 'kiln', 'sasl.password' '${PASSWORD}');\n\
        CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs' OPTIONS ('key' 'id');\n\
        INSERT INTO fs SELECT id FROM clicks;\n";

    fn load(topic: &str, password: &str) -> Pipeline {
        let vars = Variables::only(BTreeMap::from([
            ("TOPIC".to_string(), topic.to_string()),
            ("PASSWORD".to_string(), password.to_string()),
        ]));
        Pipeline::from_text("p.sql", TEXT, &vars).unwrap()
    }

    #[test]
    fn the_lineage_hash_leaves_secrets_out() {
        let a = load("clicks", "hunter2");
        // A password holding a quote is still one option value.
        let b = load("clicks", "it's a secret");
        let (_, decl) = b.kafka_sources().next().unwrap();
        assert!(
            decl.options
                .client
                .contains(&("sasl.password".to_string(), "it's a secret".to_string()))
        );
        assert_eq!(
            a.sql_sha256, b.sql_sha256,
            "the password does not change the hash"
        );
        assert_ne!(
            a.sql_sha256,
            load("views", "hunter2").sql_sha256,
            "other variables do"
        );
        assert!(secret_option("ssl.key.password") && secret_option("sasl.oauthbearer.client.secret"));
        assert!(!secret_option("sasl.username") && !secret_option("bootstrap.servers"));
    }
}
