//! `${NAME}` and `${NAME:-default}` substitution.
//!
//! Substitution happens before the SQL is parsed, so every position the
//! parser or planner reports is a position in the substituted text. The
//! [`SourceMap`] built here turns those back into positions in the file the
//! user wrote, which is what `file:line:col` messages must point at.

use std::collections::BTreeMap;

use super::problem::{Position, Problem};

/// Where variable values come from: `--set` first, then the environment.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    overrides: BTreeMap<String, String>,
    use_env: bool,
}

impl Variables {
    /// Variables from `--set` values, falling back to the process environment.
    pub fn from_env(overrides: BTreeMap<String, String>) -> Self {
        Self {
            overrides,
            use_env: true,
        }
    }

    /// Only the given values; the environment is ignored (tests, embedding).
    pub fn only(overrides: BTreeMap<String, String>) -> Self {
        Self {
            overrides,
            use_env: false,
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.overrides
            .get(name)
            .cloned()
            .or_else(|| self.use_env.then(|| std::env::var(name).ok()).flatten())
    }
}

/// Parse `NAME=value` as given to `--set`.
pub fn parse_assignment(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=value, got '{s}'"))?;
    if !is_name(name) {
        return Err(format!("'{name}' is not a valid variable name"));
    }
    Ok((name.to_string(), value.to_string()))
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// One stretch of substituted text and where it came from.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Char offset where this segment starts in the substituted text.
    out_start: usize,
    /// Char offset of the matching text in the original.
    orig_start: usize,
    /// True when the segment is copied verbatim (offsets advance together);
    /// false for a substituted value, all of which maps to its `${`.
    verbatim: bool,
}

/// Maps char offsets in substituted text back to the original text.
#[derive(Debug, Clone)]
pub struct SourceMap {
    segments: Vec<Segment>,
    original_line_starts: Vec<usize>,
    output_line_starts: Vec<usize>,
}

impl SourceMap {
    /// Turn a 1-based (line, column) in the substituted text into the same
    /// kind of position in the original text.
    pub fn to_original(&self, line: u64, column: u64) -> Position {
        let out_offset = offset_of(&self.output_line_starts, line, column);
        let idx = self
            .segments
            .partition_point(|s| s.out_start <= out_offset)
            .saturating_sub(1);
        let orig_offset = match self.segments.get(idx) {
            Some(seg) if seg.verbatim => seg.orig_start + (out_offset - seg.out_start),
            Some(seg) => seg.orig_start,
            None => out_offset,
        };
        position_of(&self.original_line_starts, orig_offset)
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    for (i, c) in text.chars().enumerate() {
        if c == '\n' {
            starts.push(i + 1);
        }
    }
    starts
}

fn offset_of(line_starts: &[usize], line: u64, column: u64) -> usize {
    let line_idx = (line.max(1) as usize - 1).min(line_starts.len() - 1);
    line_starts[line_idx] + column.max(1) as usize - 1
}

fn position_of(line_starts: &[usize], offset: usize) -> Position {
    let line_idx = line_starts.partition_point(|&s| s <= offset).saturating_sub(1);
    Position {
        line: line_idx as u64 + 1,
        column: (offset - line_starts[line_idx]) as u64 + 1,
    }
}

/// The result of substitution: the text to parse and how to map positions back.
#[derive(Debug, Clone)]
pub struct Substituted {
    pub text: String,
    pub map: SourceMap,
    /// Every value put in, in order.
    pub values: Vec<Substitution>,
}

/// One `${NAME}` and what replaced it.
#[derive(Debug, Clone)]
pub struct Substitution {
    pub name: String,
    pub value: String,
    /// Char offsets of the value in the substituted text.
    pub start: usize,
    pub end: usize,
}

impl SourceMap {
    /// The char offset in the substituted text of a 1-based (line, column).
    pub fn output_offset(&self, line: u64, column: u64) -> usize {
        offset_of(&self.output_line_starts, line, column)
    }
}

/// Replace every `${NAME}` / `${NAME:-default}` in `text`. Every missing or
/// malformed variable is reported, not only the first.
pub fn substitute(text: &str, vars: &Variables, file: &str) -> Result<Substituted, Vec<Problem>> {
    let chars: Vec<char> = text.chars().collect();
    let original_line_starts = line_starts(text);
    let mut out = String::with_capacity(text.len());
    let mut out_len = 0usize;
    let mut segments = vec![Segment {
        out_start: 0,
        orig_start: 0,
        verbatim: true,
    }];
    let mut problems = Vec::new();
    let mut values = Vec::new();
    // Where the template is: inside a '...' literal, or a -- comment. A
    // value put inside a literal has its quotes doubled, so that it stays
    // one literal whatever it holds (a password with a ' in it).
    let (mut in_literal, mut in_comment) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
            let at = position_of(&original_line_starts, i);
            let Some(close) = chars[i + 2..].iter().position(|&c| c == '}') else {
                problems.push(Problem::at(file, at, "unterminated '${': expected '}'"));
                break;
            };
            let inner: String = chars[i + 2..i + 2 + close].iter().collect();
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner.as_str(), None),
            };
            let value = if !is_name(name) {
                problems.push(Problem::at(
                    file,
                    at,
                    format!("'${{{inner}}}' is not a variable: names are letters, digits and '_'"),
                ));
                None
            } else {
                match vars.lookup(name).or_else(|| default.map(str::to_string)) {
                    Some(v) => Some(v),
                    None => {
                        problems.push(Problem::at(
                            file,
                            at,
                            format!(
                                "variable '{name}' is not set: pass --set {name}=VALUE, \
                                 export it, or write ${{{name}:-default}}"
                            ),
                        ));
                        None
                    }
                }
            };
            let value = value.unwrap_or_default();
            segments.push(Segment {
                out_start: out_len,
                orig_start: i,
                verbatim: false,
            });
            let text = if in_literal {
                value.replace('\'', "''")
            } else {
                value.clone()
            };
            out.push_str(&text);
            let start = out_len;
            out_len += text.chars().count();
            values.push(Substitution {
                name: name.to_string(),
                value,
                start,
                end: out_len,
            });
            i += close + 3;
            segments.push(Segment {
                out_start: out_len,
                orig_start: i,
                verbatim: true,
            });
        } else {
            let c = chars[i];
            if in_comment {
                in_comment = c != '\n';
            } else if c == '\'' {
                in_literal = !in_literal;
            } else if !in_literal && c == '-' && chars.get(i + 1) == Some(&'-') {
                in_comment = true;
            }
            out.push(c);
            out_len += 1;
            i += 1;
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let output_line_starts = line_starts(&out);
    Ok(Substituted {
        text: out,
        map: SourceMap {
            segments,
            original_line_starts,
            output_line_starts,
        },
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Variables {
        Variables::only(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_value_inside_a_literal_stays_one_literal() {
        let s = substitute(
            "OPTIONS ('sasl.password' '${P}') -- it's ${C}\nSELECT ${E}",
            &vars(&[("P", "it's"), ("C", "x'y"), ("E", "'lit'")]),
            "f",
        )
        .unwrap();
        // Inside '...': doubled. In a comment or bare SQL: as given.
        assert_eq!(
            s.text,
            "OPTIONS ('sasl.password' 'it''s') -- it's x'y\nSELECT 'lit'"
        );
        let p = &s.values[0];
        assert_eq!((p.name.as_str(), p.value.as_str()), ("P", "it's"));
        assert_eq!(
            s.text
                .chars()
                .skip(p.start)
                .take(p.end - p.start)
                .collect::<String>(),
            "it''s"
        );
    }

    #[test]
    fn substitutes_values_and_defaults() {
        let s = substitute("a ${X} b ${Y:-dflt} c ${Z:-}", &vars(&[("X", "xx")]), "f").unwrap();
        assert_eq!(s.text, "a xx b dflt c ");
    }

    #[test]
    fn set_value_beats_default() {
        let s = substitute("${X:-d}", &vars(&[("X", "v")]), "f").unwrap();
        assert_eq!(s.text, "v");
    }

    #[test]
    fn reports_every_missing_variable_with_its_position() {
        let err = substitute("select 1;\n  ${A} and ${B}\n", &vars(&[]), "p.sql").unwrap_err();
        let shown: Vec<String> = err.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 2);
        assert!(
            shown[0].starts_with("p.sql:2:3: variable 'A' is not set"),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].starts_with("p.sql:2:12: variable 'B' is not set"),
            "{}",
            shown[1]
        );
    }

    #[test]
    fn unterminated_and_invalid_names_are_problems() {
        let err = substitute("x ${A-B} ${", &vars(&[]), "f").unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err[0].message.contains("is not a variable"));
        assert!(err[1].message.contains("unterminated"));
    }

    #[test]
    fn maps_positions_after_a_substitution_back_to_the_original() {
        // "${LONG}" (7 chars) becomes "abcdefghij" (10 chars) on line 1.
        let s = substitute("x ${LONG} yy\nzz", &vars(&[("LONG", "abcdefghij")]), "f").unwrap();
        assert_eq!(s.text, "x abcdefghij yy\nzz");
        // 'y' at output column 14 is original column 11.
        assert_eq!(s.map.to_original(1, 14), Position { line: 1, column: 11 });
        // Anything inside the value points at the '${'.
        assert_eq!(s.map.to_original(1, 6), Position { line: 1, column: 3 });
        assert_eq!(s.map.to_original(2, 2), Position { line: 2, column: 2 });
    }

    #[test]
    fn multi_line_values_keep_later_lines_right() {
        let s = substitute("${V}\nnext", &vars(&[("V", "a\nb\nc")]), "f").unwrap();
        assert_eq!(s.map.to_original(4, 3), Position { line: 2, column: 3 });
    }

    #[test]
    fn assignment_parsing() {
        assert_eq!(parse_assignment("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert!(parse_assignment("1A=x").is_err());
        assert!(parse_assignment("novalue").is_err());
    }
}
