//! The saved-query language: a small filter over a machine's facts, used to
//! scope deployments ("every prod web server on Debian with libssl.so.3").
//! Pure: parsing, printing and matching, no I/O.
//!
//! ```text
//! query      = or
//! or         = and { "or" and }
//! and        = unary { "and" unary }
//! unary      = "not" unary | "(" or ")" | term
//! term       = text-field ":" value | "cores" compare number
//! text-field = "tag" | "hostname" | "os" | "kernel" | "arch" | "target"
//! compare    = "<" | "<=" | ">" | ">=" | "=" | ":"        (":" is "=")
//! value      = bare | quoted
//! bare       = one or more characters other than whitespace, "(", ")" and '"'
//! quoted     = '"' { any character but '"' and "\" | '\"' | "\\" } '"'
//! number     = decimal digits, at most 4294967295
//! ```
//!
//! - `not` binds tighter than `and`, which binds tighter than `or`; parentheses group.
//!   There is no implicit `and`: `tag:a tag:b` is an error.
//! - Whitespace separates tokens; a term is written without spaces (`tag:prod`, `cores>=8`).
//! - Case: keywords and field names ignore case (`TAG:x AND NOT os:y`); values are
//!   matched ignoring ASCII case (`os:debian*` matches "Debian GNU/Linux 12").
//! - A value is a glob over the whole fact: `*` matches any run of characters (also
//!   none), `?` exactly one character; every other character matches itself. There
//!   is no escape for a literal `*` or `?`.
//! - `tag:` matches when any of the machine's tags matches, `target:` when any target
//!   file the machine reported (a file name like `libssl.so.3`, no directory) matches.
//!   `hostname`, `os`, `kernel`, `arch` and `cores` are the facts of the last check-in.
//! - Limits against abuse: at most [`MAX_LEN`] bytes and [`MAX_DEPTH`] nested
//!   parentheses and `not`s. Matching costs at most (pattern × fact length) steps.
//!
//! Errors name the byte position and what was expected there, e.g.
//! `expected a field like tag: or hostname: at 12, found ")"`.
//!
//! Hand-written recursive descent rather than a parser crate: the grammar is a dozen
//! lines, values are context-dependent (`tag:env=prod` and `tag:team:web` are one value
//! each, so a separate tokenizer would need the parser's state anyway), the error text
//! with positions is the part users see and we want it exact, and the limits have to be
//! enforced inside the recursion. A crate would add a dependency to the server and
//! still need all of that written around it.

use std::fmt;

/// Longest query text accepted, in bytes.
pub const MAX_LEN: usize = 1024;
/// Deepest nesting of parentheses and `not` accepted.
pub const MAX_DEPTH: usize = 32;

/// A fact a text term looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Tag,
    Hostname,
    Os,
    Kernel,
    Arch,
    Target,
}

impl Field {
    pub const ALL: [Field; 6] = [Field::Tag, Field::Hostname, Field::Os, Field::Kernel, Field::Arch, Field::Target];

    pub fn name(self) -> &'static str {
        match self {
            Field::Tag => "tag",
            Field::Hostname => "hostname",
            Field::Os => "os",
            Field::Kernel => "kernel",
            Field::Arch => "arch",
            Field::Target => "target",
        }
    }

    fn parse(word: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(word))
    }
}

/// A comparison of the machine's core count with a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Compare {
    pub fn symbol(self) -> &'static str {
        match self {
            Compare::Lt => "<",
            Compare::Le => "<=",
            Compare::Gt => ">",
            Compare::Ge => ">=",
            Compare::Eq => "=",
        }
    }

    fn holds(self, left: i64, right: i64) -> bool {
        match self {
            Compare::Lt => left < right,
            Compare::Le => left <= right,
            Compare::Gt => left > right,
            Compare::Ge => left >= right,
            Compare::Eq => left == right,
        }
    }
}

/// A parsed query. `And` and `Or` hold at least two items and never an item of
/// their own kind (`(a or b) or c` is one `Or` of three), so printing and parsing
/// again gives the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Match { field: Field, pattern: String },
    Cores { compare: Compare, value: u32 },
    Not(Box<Query>),
    And(Vec<Query>),
    Or(Vec<Query>),
}

/// What a query is evaluated against: one machine.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub hostname: &'a str,
    pub os: &'a str,
    pub kernel: &'a str,
    pub arch: &'a str,
    pub cores: i64,
    pub tags: &'a [String],
    /// File names of the targets the machine reported (e.g. `libssl.so.3`).
    pub targets: &'a [&'a str],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is {len} bytes; at most {MAX_LEN} are allowed")]
    TooLong { len: usize },
    #[error("the query nests parentheses and 'not' deeper than {MAX_DEPTH} levels at {at}")]
    TooDeep { at: usize },
    #[error("expected {expected} at {at}, found {found}")]
    Expected { expected: String, at: usize, found: String },
    #[error(
        "unknown field {name:?} at {at}; the fields are tag:, hostname:, os:, kernel:, arch:, target: and cores (<, <=, >, >=, =)"
    )]
    UnknownField { name: String, at: usize },
    #[error("number at {at} is too large (at most 4294967295)")]
    NumberTooLarge { at: usize },
    #[error("unknown escape at {at}: inside quotes only \\\" and \\\\ are escapes")]
    BadEscape { at: usize },
    #[error("expected '\"' to close the value opened at {open}, at {at}, found the end of the query")]
    Unterminated { open: usize, at: usize },
}

impl QueryError {
    /// The byte offset in the query text the error is about.
    pub fn position(&self) -> usize {
        match self {
            QueryError::TooLong { .. } => MAX_LEN,
            QueryError::TooDeep { at }
            | QueryError::Expected { at, .. }
            | QueryError::UnknownField { at, .. }
            | QueryError::NumberTooLarge { at }
            | QueryError::BadEscape { at }
            | QueryError::Unterminated { at, .. } => *at,
        }
    }
}

/// Parses a query (see the module documentation for the grammar).
pub fn parse(text: &str) -> Result<Query, QueryError> {
    if text.len() > MAX_LEN {
        return Err(QueryError::TooLong { len: text.len() });
    }
    let mut p = Parser { src: text, pos: 0, depth: 0 };
    let q = p.or()?;
    p.skip_ws();
    if p.pos < text.len() {
        return Err(p.expected("'and', 'or' or the end of the query"));
    }
    Ok(q)
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Characters that end a bare value.
fn ends_bare(c: char) -> bool {
    is_space(c) || matches!(c, '(' | ')' | '"')
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches(is_space).len();
    }

    /// Length of the word (ASCII letters, digits, `_`) at the current position.
    fn word_len(&self) -> usize {
        self.rest().bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count()
    }

    /// Consumes keyword `kw` (any case) if it comes next as a whole word.
    fn keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        let n = self.word_len();
        let rest = self.rest();
        let whole = !rest[n..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if n == kw.len() && rest[..n].eq_ignore_ascii_case(kw) && whole {
            self.pos += n;
            true
        } else {
            false
        }
    }

    /// What is at the current position, for error messages.
    fn found(&self) -> String {
        let rest = self.rest();
        match rest.chars().next() {
            None => "the end of the query".into(),
            Some(c) if is_space(c) => "whitespace".into(),
            Some(c) if matches!(c, '(' | ')' | '"') => format!("{:?}", c.to_string()),
            Some(_) => {
                let word: String = rest.chars().take_while(|c| !ends_bare(*c)).take(24).collect();
                format!("{word:?}")
            }
        }
    }

    fn expected(&self, what: &str) -> QueryError {
        QueryError::Expected { expected: what.into(), at: self.pos, found: self.found() }
    }

    fn or(&mut self) -> Result<Query, QueryError> {
        let mut items = vec![self.and()?];
        while self.keyword("or") {
            items.push(self.and()?);
        }
        Ok(join(items, true))
    }

    fn and(&mut self) -> Result<Query, QueryError> {
        let mut items = vec![self.unary()?];
        while self.keyword("and") {
            items.push(self.unary()?);
        }
        Ok(join(items, false))
    }

    fn enter(&mut self, at: usize) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(QueryError::TooDeep { at }) } else { Ok(()) }
    }

    fn unary(&mut self) -> Result<Query, QueryError> {
        self.skip_ws();
        let at = self.pos;
        if self.keyword("not") {
            self.enter(at)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Query::Not(Box::new(inner)));
        }
        if self.peek() == Some('(') {
            self.enter(at)?;
            self.pos += 1;
            let inner = self.or()?;
            self.skip_ws();
            if self.peek() != Some(')') {
                return Err(self.expected("'and', 'or' or ')'"));
            }
            self.pos += 1;
            self.depth -= 1;
            return Ok(inner);
        }
        self.term()
    }

    fn term(&mut self) -> Result<Query, QueryError> {
        let at = self.pos;
        let n = self.word_len();
        if n == 0 {
            return Err(self.expected("a field like tag: or hostname:"));
        }
        let word = &self.rest()[..n];
        if word.eq_ignore_ascii_case("cores") {
            self.pos += n;
            return self.cores();
        }
        let field = Field::parse(word).ok_or_else(|| QueryError::UnknownField { name: word.into(), at })?;
        self.pos += n;
        if self.peek() != Some(':') {
            return Err(self.expected(&format!("':' after {}", field.name())));
        }
        self.pos += 1;
        let pattern = self.value(field)?;
        Ok(Query::Match { field, pattern })
    }

    fn cores(&mut self) -> Result<Query, QueryError> {
        let rest = self.rest();
        let (compare, len) = if rest.starts_with("<=") {
            (Compare::Le, 2)
        } else if rest.starts_with(">=") {
            (Compare::Ge, 2)
        } else if rest.starts_with('<') {
            (Compare::Lt, 1)
        } else if rest.starts_with('>') {
            (Compare::Gt, 1)
        } else if rest.starts_with('=') || rest.starts_with(':') {
            (Compare::Eq, 1)
        } else {
            return Err(self.expected("one of <, <=, >, >=, = after cores"));
        };
        self.pos += len;
        let at = self.pos;
        let digits = self.rest().bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(self.expected(&format!("a number after cores{}", compare.symbol())));
        }
        let value = self.rest()[..digits].parse::<u32>().map_err(|_| QueryError::NumberTooLarge { at })?;
        self.pos += digits;
        Ok(Query::Cores { compare, value })
    }

    fn value(&mut self, field: Field) -> Result<String, QueryError> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let rest = self.rest();
        let len = rest.find(ends_bare).unwrap_or(rest.len());
        if len == 0 {
            return Err(self.expected(&format!("a value after {}:", field.name())));
        }
        let value = rest[..len].to_string();
        self.pos += len;
        Ok(value)
    }

    fn quoted(&mut self) -> Result<String, QueryError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        let base = self.pos;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos = base + i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    _ => return Err(QueryError::BadEscape { at: base + i }),
                },
                c => out.push(c),
            }
        }
        Err(QueryError::Unterminated { open, at: self.src.len() })
    }
}

/// An `and` / `or` of `items`, flattened so that it never holds its own kind.
fn join(mut items: Vec<Query>, or: bool) -> Query {
    if items.len() == 1 {
        return items.remove(0);
    }
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Query::Or(inner) if or => flat.extend(inner),
            Query::And(inner) if !or => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if or { Query::Or(flat) } else { Query::And(flat) }
}

/// Writes a value bare when it can be read back bare, else quoted.
fn write_value(f: &mut fmt::Formatter<'_>, v: &str) -> fmt::Result {
    if !v.is_empty() && !v.contains(ends_bare) {
        return f.write_str(v);
    }
    f.write_str("\"")?;
    for c in v.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// The canonical text: lower-case keywords and fields, single spaces, parentheses
/// only where needed. Parsing it gives back an equal [`Query`].
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Match { field, pattern } => {
                write!(f, "{}:", field.name())?;
                write_value(f, pattern)
            }
            Query::Cores { compare, value } => write!(f, "cores{}{value}", compare.symbol()),
            Query::Not(inner) => match **inner {
                Query::And(_) | Query::Or(_) => write!(f, "not ({inner})"),
                _ => write!(f, "not {inner}"),
            },
            Query::And(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    match item {
                        Query::Or(_) => write!(f, "({item})")?,
                        _ => write!(f, "{item}")?,
                    }
                }
                Ok(())
            }
            Query::Or(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

impl Query {
    /// Whether the machine with these facts is selected.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Query::Match { field, pattern } => match field {
                Field::Tag => facts.tags.iter().any(|t| glob(pattern, t)),
                Field::Target => facts.targets.iter().any(|t| glob(pattern, t)),
                Field::Hostname => glob(pattern, facts.hostname),
                Field::Os => glob(pattern, facts.os),
                Field::Kernel => glob(pattern, facts.kernel),
                Field::Arch => glob(pattern, facts.arch),
            },
            Query::Cores { compare, value } => compare.holds(facts.cores, i64::from(*value)),
            Query::Not(inner) => !inner.matches(facts),
            Query::And(items) => items.iter().all(|q| q.matches(facts)),
            Query::Or(items) => items.iter().any(|q| q.matches(facts)),
        }
    }

    /// Whether any term looks at `field` (callers load target file names only when needed).
    pub fn uses(&self, field: Field) -> bool {
        match self {
            Query::Match { field: f, .. } => *f == field,
            Query::Cores { .. } => false,
            Query::Not(inner) => inner.uses(field),
            Query::And(items) | Query::Or(items) => items.iter().any(|q| q.uses(field)),
        }
    }
}

/// Whole-text glob match ignoring ASCII case: `*` any run, `?` one character.
/// Greedy with one backtrack point (the last `*`), so at most |pattern| × |text| steps.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // After the last `*` seen: where the pattern continues, and where in the text its match ends.
    let mut star: Option<(usize, usize)> = None;
    while let Some(tc) = text[t..].chars().next() {
        match pattern[p..].chars().next() {
            Some('*') => {
                p += 1;
                star = Some((p, t));
                continue;
            }
            Some(pc) if pc == '?' || pc.eq_ignore_ascii_case(&tc) => {
                p += pc.len_utf8();
                t += tc.len_utf8();
                continue;
            }
            _ => {}
        }
        let Some((sp, st)) = star else { return false };
        // Let the `*` take one more character and retry from there.
        let skipped = text[st..].chars().next().map_or(1, char::len_utf8);
        star = Some((sp, st + skipped));
        p = sp;
        t = st + skipped;
    }
    pattern[p..].chars().all(|c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(text: &str) -> Query {
        match parse(text) {
            Ok(q) => q,
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(q) => panic!("{text:?} parsed as {q:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn m(field: Field, pattern: &str) -> Query {
        Query::Match { field, pattern: pattern.into() }
    }

    const TAGS: &[&str] = &["prod", "team:web", "env=eu"];

    fn facts<'a>(tags: &'a [String], targets: &'a [&'a str]) -> Facts<'a> {
        Facts {
            hostname: "web-01.example.com",
            os: "Debian GNU/Linux 12 (bookworm)",
            kernel: "6.1.0-18-amd64",
            arch: "x86_64",
            cores: 8,
            tags,
            targets,
        }
    }

    fn sel(text: &str) -> bool {
        let tags: Vec<String> = TAGS.iter().map(|s| s.to_string()).collect();
        q(text).matches(&facts(&tags, &["libssl.so.3", "libc.so.6", "nginx"]))
    }

    #[test]
    fn terms_and_precedence() {
        assert_eq!(q("tag:prod"), m(Field::Tag, "prod"));
        assert_eq!(q("  HostName:web-*  "), m(Field::Hostname, "web-*"));
        assert_eq!(q("cores>=8"), Query::Cores { compare: Compare::Ge, value: 8 });
        assert_eq!(q("cores:8"), Query::Cores { compare: Compare::Eq, value: 8 });
        assert_eq!(q("tag:team:web"), m(Field::Tag, "team:web"));
        assert_eq!(q("tag:env=eu"), m(Field::Tag, "env=eu"));
        assert_eq!(q(r#"os:"Debian GNU/Linux \"12\" \\ x""#), m(Field::Os, r#"Debian GNU/Linux "12" \ x"#));
        assert_eq!(q(r#"os:"""#), m(Field::Os, ""));
        // not > and > or.
        assert_eq!(
            q("tag:a or not tag:b and tag:c"),
            Query::Or(vec![
                m(Field::Tag, "a"),
                Query::And(vec![Query::Not(Box::new(m(Field::Tag, "b"))), m(Field::Tag, "c")])
            ])
        );
        assert_eq!(
            q("(tag:a or tag:b) and tag:c"),
            Query::And(vec![Query::Or(vec![m(Field::Tag, "a"), m(Field::Tag, "b")]), m(Field::Tag, "c")])
        );
        // Nested groups of one kind are one list.
        assert_eq!(q("(tag:a or tag:b) or (tag:c or tag:d)"), q("tag:a or tag:b or tag:c or tag:d"));
        assert_eq!(q("((tag:a))"), m(Field::Tag, "a"));
        // Keywords in any case, next to parentheses.
        assert_eq!(q("NOT(tag:a)AnD(tag:b)"), q("not tag:a and tag:b"));
    }

    #[test]
    fn matching_facts() {
        assert!(sel("tag:prod"));
        assert!(sel("tag:PROD"));
        assert!(!sel("tag:pro"));
        assert!(sel("tag:team:*"));
        assert!(sel("hostname:web-*"));
        assert!(sel("hostname:WEB-0?.example.com"));
        assert!(!sel("hostname:web-?.example.com"));
        assert!(sel("os:debian*"));
        assert!(sel(r#"os:"debian gnu/linux 12*""#));
        assert!(!sel("os:ubuntu*"));
        assert!(sel("kernel:6.1.*"));
        assert!(!sel("kernel:6.10.*"));
        assert!(sel("arch:x86_64"));
        assert!(!sel("arch:aarch64"));
        for (text, want) in [
            ("cores>=8", true),
            ("cores>8", false),
            ("cores<=8", true),
            ("cores<8", false),
            ("cores=8", true),
            ("cores=4", false),
            ("cores>4", true),
        ] {
            assert_eq!(sel(text), want, "{text}");
        }
        assert!(sel("target:libssl.so.3"));
        assert!(sel("target:libssl.so.*"));
        assert!(!sel("target:libcrypto*"));
        assert!(sel("tag:prod and (hostname:db-* or cores>=8) and not os:centos*"));
        assert!(!sel("tag:prod and not target:nginx"));
        assert!(sel("tag:nope or arch:x86_64"));
        // A machine that has no tags or targets matches no tag: or target: term.
        let none = facts(&[], &[]);
        assert!(!q("tag:*").matches(&none));
        assert!(q("not target:*").matches(&none));
    }

    #[test]
    fn uses_reports_the_fields_a_query_reads() {
        assert!(q("tag:a or not (cores>2 and target:x)").uses(Field::Target));
        assert!(!q("tag:a or cores>2").uses(Field::Target));
    }

    #[test]
    fn glob_rules() {
        assert!(glob("", ""));
        assert!(!glob("", "a"));
        assert!(glob("*", ""));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("*.so.*", "libssl.so.3"));
        assert!(glob("??", "éx"), "? is one character, not one byte");
        assert!(!glob("?", "éx"));
        assert!(glob("ÄB*", "Äbc"));
        assert!(!glob("äb*", "Äbc"), "only ASCII case is ignored");
        assert!(glob("a**b", "ab"));
    }

    #[test]
    fn errors_say_where_and_what() {
        assert_eq!(err(""), "expected a field like tag: or hostname: at 0, found the end of the query");
        assert_eq!(err("tag:prod and (hostname:x or )"), "expected a field like tag: or hostname: at 28, found \")\"");
        assert_eq!(err("tag:a tag:b"), "expected 'and', 'or' or the end of the query at 6, found \"tag:b\"");
        assert_eq!(err("(tag:a"), "expected 'and', 'or' or ')' at 6, found the end of the query");
        assert_eq!(err("tag:a)"), "expected 'and', 'or' or the end of the query at 5, found \")\"");
        assert_eq!(err("tag prod"), "expected ':' after tag at 3, found whitespace");
        assert_eq!(err("tag: prod"), "expected a value after tag: at 4, found whitespace");
        assert_eq!(err("tag:"), "expected a value after tag: at 4, found the end of the query");
        assert!(err("prod").starts_with("unknown field \"prod\" at 0; the fields are tag:"), "{}", err("prod"));
        assert_eq!(err("cores~4"), "expected one of <, <=, >, >=, = after cores at 5, found \"~4\"");
        assert_eq!(err("cores>=x"), "expected a number after cores>= at 7, found \"x\"");
        assert_eq!(err("cores>99999999999"), "number at 6 is too large (at most 4294967295)");
        assert_eq!(err("tag:a andtag:b"), "expected 'and', 'or' or the end of the query at 6, found \"andtag:b\"");
        assert_eq!(err("os:\"abc"), "expected '\"' to close the value opened at 3, at 7, found the end of the query");
        assert_eq!(err(r#"os:"a\nb""#), "unknown escape at 5: inside quotes only \\\" and \\\\ are escapes");
        assert_eq!(err("not"), "expected a field like tag: or hostname: at 3, found the end of the query");
        // Positions are bytes.
        assert_eq!(parse("os:\"é\" )").map_err(|e| e.position()), Err(8));
    }

    #[test]
    fn limits() {
        let long = format!("tag:{}", "a".repeat(MAX_LEN));
        assert_eq!(parse(&long), Err(QueryError::TooLong { len: MAX_LEN + 4 }));
        let ok = format!("{}tag:a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(q(&ok), m(Field::Tag, "a"));
        let deep = format!("{}tag:a{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(&deep), Err(QueryError::TooDeep { at: MAX_DEPTH }));
        let nots = format!("{}tag:a", "not ".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(&nots).map_err(|e| e.position()), Err(4 * MAX_DEPTH));
        // Long flat lists are not deep.
        let wide = vec!["tag:a"; 100].join(" or ");
        assert!(wide.len() <= MAX_LEN && parse(&wide).is_ok());
        // Worst-case glob stays fast (quadratic, bounded by the lengths).
        let pattern = format!("{}b", "*a".repeat(400));
        assert!(!glob(&pattern, &"a".repeat(255)));
    }

    #[test]
    fn display_is_canonical() {
        for (text, shown) in [
            ("TAG:prod AND NOT (os:x OR os:y)", "tag:prod and not (os:x or os:y)"),
            ("(tag:a or tag:b) and tag:c", "(tag:a or tag:b) and tag:c"),
            ("tag:a or (tag:b and tag:c)", "tag:a or tag:b and tag:c"),
            ("cores:08", "cores=8"),
            ("os:\"a b\"", "os:\"a b\""),
            ("os:\"ab\"", "os:ab"),
            ("os:\"\"", "os:\"\""),
            ("os:\"say \\\"hi\\\"\"", "os:\"say \\\"hi\\\"\""),
            ("os:a\\b", "os:a\\b"),
            ("not not tag:a", "not not tag:a"),
        ] {
            let parsed = q(text);
            assert_eq!(parsed.to_string(), shown, "{text}");
            assert_eq!(q(shown), parsed, "{shown}");
        }
    }

    /// A naive reference glob (exponential, fine for short strings).
    fn glob_reference(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| glob_reference(rest, &t[i..])),
            Some((pc, rest)) => t
                .split_first()
                .is_some_and(|(tc, tr)| (*pc == '?' || pc.eq_ignore_ascii_case(tc)) && glob_reference(rest, tr)),
        }
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "tag:prod",
            "TAG:Web-*",
            "hostname:db-??",
            "os:\"Debian GNU/Linux*\"",
            "kernel:6.1.*",
            "arch:x86_64",
            "target:libssl.so.3",
            "cores>=8",
            "cores<2",
            "cores:4",
            "and",
            "or",
            "not",
            "AND",
            "(",
            ")",
            "tag:",
            ":",
            "\"",
            "\\",
            "cores",
            "os:\"a\\\"b\"",
            "é",
        ])
        .prop_map(str::to_string)
    }

    /// Valid queries by construction, in mixed case, with bare and quoted values.
    fn query_text() -> impl Strategy<Value = String> {
        let field = || prop::sample::select(vec!["tag", "Hostname", "OS", "kernel", "arch", "target"]);
        let leaf = prop_oneof![
            (field(), "[a-zA-Z0-9*?.:=_-]{1,8}").prop_map(|(f, v)| format!("{f}:{v}")),
            (field(), "[ a-z()\"\\\\*é]{0,6}")
                .prop_map(|(f, v)| format!("{f}:\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))),
            (prop::sample::select(vec!["<", "<=", ">", ">=", "=", ":"]), 0u32..100_000)
                .prop_map(|(c, n)| format!("cores{c}{n}")),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|q| format!("not {q}")),
                inner.clone().prop_map(|q| format!("({q})")),
                prop::collection::vec(inner.clone(), 2..4).prop_map(|v| v.join(" and ")),
                prop::collection::vec(inner, 2..4).prop_map(|v| v.join(" OR ")),
            ]
        })
    }

    fn check_round_trip(text: &str) -> Result<(), TestCaseError> {
        if let Ok(parsed) = parse(text) {
            let shown = parsed.to_string();
            prop_assert_eq!(parse(&shown), Ok(parsed.clone()), "{:?} shown as {:?}", text, shown);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_round_trips(text in "\\PC{0,80}") {
            let result = parse(&text);
            if let Err(e) = &result {
                prop_assert!(e.position() <= text.len().max(MAX_LEN));
            }
            check_round_trip(&text)?;
        }

        #[test]
        fn query_like_text_round_trips(parts in prop::collection::vec((fragment(), prop::sample::select(vec!["", " ", "  ", "\t"])), 1..24)) {
            let text: String = parts.iter().map(|(f, sep)| format!("{f}{sep}")).collect();
            check_round_trip(&text)?;
            // The error position is a character boundary inside the text.
            if let Err(e) = parse(&text) {
                prop_assert!(text.is_char_boundary(e.position().min(text.len())));
            }
        }

        #[test]
        fn valid_queries_parse_and_round_trip(text in query_text()) {
            let parsed = parse(&text);
            prop_assert!(parsed.is_ok(), "{:?}: {:?}", text, parsed);
            check_round_trip(&text)?;
        }

        #[test]
        fn glob_agrees_with_the_reference(p in "[ab*?]{0,8}", t in "[abAB]{0,10}") {
            let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
            prop_assert_eq!(glob(&p, &t), glob_reference(&pc, &tc));
        }
    }
}
