//! The syntax of SCIM filters and attribute paths (RFC 7644 §3.4.2.2, §3.5.2): a tokenizer
//! and a recursive-descent parser with precedence grouping > not > and > or. It knows no
//! schema: `typed` resolves what it builds.

use serde_json::Value;

use crate::scim::schema;

/// Longest filter accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses, `not` and value filters.
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s.to_ascii_lowercase().as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            _ => return None,
        })
    }
}

/// `urn:...:attr.sub`: an optional schema URN, an attribute, an optional sub-attribute.
/// Why a filter or a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the {0} is longer than {MAX_LEN} bytes")]
    TooLong(&'static str),
    #[error("the filter is empty")]
    Empty,
    #[error("the filter nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("value filters cannot nest")]
    NestedValueFilter,
    #[error("a string in a filter cannot hold the NUL character")]
    Nul,
    #[error("unterminated string")]
    UnterminatedString,
    #[error("bad attribute path {0:?}")]
    BadAttributePath(String),
    /// What the parser expected, and what it found instead.
    #[error("{0}")]
    Unexpected(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub urn: Option<String>,
    pub attr: String,
    pub sub: Option<String>,
}

impl AttrPath {
    pub fn parse(s: &str) -> Result<AttrPath, ParseError> {
        let (urn, rest) = if schema::is_urn(s) {
            let (urn, rest) = s
                .rsplit_once(':')
                .ok_or_else(|| ParseError::BadAttributePath(s.to_string()))?;
            (Some(urn.to_string()), rest)
        } else {
            (None, s)
        };
        let (attr, sub) = match rest.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (rest, None),
        };
        let name_ok = |n: &str| {
            let mut chars = n.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !name_ok(attr) || sub.is_some_and(|s| !name_ok(s)) {
            return Err(ParseError::BadAttributePath(s.to_string()));
        }
        Ok(AttrPath {
            urn,
            attr: attr.to_string(),
            sub: sub.map(str::to_string),
        })
    }

    /// The name with its URN: what `ResourceType::resolve` takes.
    pub fn full_attr(&self) -> String {
        match &self.urn {
            Some(u) => format!("{u}:{}", self.attr),
            None => self.attr.clone(),
        }
    }
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full_attr())?;
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Present(AttrPath),
    Compare(AttrPath, Op, Value),
    /// `emails[type eq "work"]`: the inner filter applies to each value of the attribute.
    ValuePath(AttrPath, Box<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// An attribute path, operator or keyword.
    Word(String),
    /// A JSON literal: string, number, true, false, null.
    Literal(Value),
}

fn tokenize(s: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Token::LParen);
                i += 1
            }
            b')' => {
                out.push(Token::RParen);
                i += 1
            }
            b'[' => {
                out.push(Token::LBracket);
                i += 1
            }
            b']' => {
                out.push(Token::RBracket);
                i += 1
            }
            b'"' => {
                // A JSON string: find its end, honouring escapes, and let serde decode it.
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(ParseError::UnterminatedString),
                        Some(b'\\') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                let lit: String = serde_json::from_str(&s[start..i.min(s.len())])
                    .map_err(|e| ParseError::Unexpected(format!("bad string literal: {e}")))?;
                if lit.contains('\0') {
                    return Err(ParseError::Nul);
                }
                out.push(Token::Literal(Value::String(lit)));
            }
            _ => {
                let start = i;
                while i < bytes.len() && !b" \t\n\r()[]\"".contains(&bytes[i]) {
                    i += 1;
                }
                let word = &s[start..i];
                let lower = word.to_ascii_lowercase();
                let tok = match lower.as_str() {
                    "true" => Token::Literal(Value::Bool(true)),
                    "false" => Token::Literal(Value::Bool(false)),
                    "null" => Token::Literal(Value::Null),
                    _ if word.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                        let n: serde_json::Number = word
                            .parse()
                            .map_err(|_| ParseError::Unexpected(format!("bad number {word:?}")))?;
                        Token::Literal(Value::Number(n))
                    }
                    _ => Token::Word(word.to_string()),
                };
                out.push(tok);
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn expect(&mut self, t: Token, what: &str) -> Result<(), ParseError> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            Some(x) => Err(ParseError::Unexpected(format!(
                "expected {what}, found {}",
                describe(&x)
            ))),
            None => Err(ParseError::Unexpected(format!(
                "expected {what}, found the end of the filter"
            ))),
        }
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        Ok(())
    }

    fn or(&mut self, in_value_path: bool) -> Result<Filter, ParseError> {
        let mut left = self.and(in_value_path)?;
        while self.keyword("or") {
            self.at += 1;
            let right = self.and(in_value_path)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, in_value_path: bool) -> Result<Filter, ParseError> {
        let mut left = self.unary(in_value_path)?;
        while self.keyword("and") {
            self.at += 1;
            let right = self.unary(in_value_path)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, in_value_path: bool) -> Result<Filter, ParseError> {
        if self.keyword("not") {
            self.at += 1;
            self.nest()?;
            self.expect(Token::LParen, "'(' after not")?;
            let inner = self.or(in_value_path)?;
            self.expect(Token::RParen, "')'")?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.at += 1;
            self.nest()?;
            let inner = self.or(in_value_path)?;
            self.expect(Token::RParen, "')'")?;
            self.depth -= 1;
            return Ok(inner);
        }
        let path = match self.next() {
            Some(Token::Word(w)) => AttrPath::parse(&w)?,
            Some(t) => {
                return Err(ParseError::Unexpected(format!(
                    "expected an attribute, found {}",
                    describe(&t)
                )))
            }
            None => {
                return Err(ParseError::Unexpected(
                    "expected an attribute, found the end of the filter".into(),
                ))
            }
        };
        if self.peek() == Some(&Token::LBracket) {
            if in_value_path {
                return Err(ParseError::NestedValueFilter);
            }
            if path.sub.is_some() {
                return Err(ParseError::Unexpected(format!(
                    "{path}[...]: a value filter follows an attribute, not a sub-attribute"
                )));
            }
            self.at += 1;
            self.nest()?;
            let inner = self.or(true)?;
            self.expect(Token::RBracket, "']'")?;
            self.depth -= 1;
            let inner = match self.peek() {
                Some(Token::Word(w)) if w.starts_with('.') => {
                    let test = self.sub_attribute_test(&path)?;
                    Filter::And(Box::new(inner), Box::new(test))
                }
                _ => inner,
            };
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        self.test(path)
    }

    /// `emails[type eq "work"].value eq "x"` (Entra ID's matching filter): the test after
    /// `].` applies to the same value the bracket selected, so it joins the value filter.
    fn sub_attribute_test(&mut self, outer: &AttrPath) -> Result<Filter, ParseError> {
        let Some(Token::Word(w)) = self.next() else {
            unreachable!("peeked a word")
        };
        let sub = AttrPath::parse(&w[1..])
            .ok()
            .filter(|p| p.urn.is_none() && p.sub.is_none())
            .ok_or_else(|| {
                ParseError::Unexpected(format!("bad sub-attribute {w:?} after {outer}[...]"))
            })?;
        self.test(sub)
    }

    /// The operator and value after an attribute path: `pr`, or `op literal`.
    fn test(&mut self, path: AttrPath) -> Result<Filter, ParseError> {
        let op = match self.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("pr") => {
                return Ok(Filter::Present(path))
            }
            Some(Token::Word(w)) => Op::parse(&w)
                .ok_or_else(|| ParseError::Unexpected(format!("unknown operator {w:?}")))?,
            Some(t) => {
                return Err(ParseError::Unexpected(format!(
                    "expected an operator after {path}, found {}",
                    describe(&t)
                )))
            }
            None => {
                return Err(ParseError::Unexpected(format!(
                    "expected an operator after {path}"
                )))
            }
        };
        match self.next() {
            Some(Token::Literal(v)) => Ok(Filter::Compare(path, op, v)),
            Some(t) => Err(ParseError::Unexpected(format!(
                "expected a value after {path} {op:?}, found {}",
                describe(&t)
            ))),
            None => Err(ParseError::Unexpected(format!(
                "expected a value after {path} {op:?}"
            ))),
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::LParen => "'('".into(),
        Token::RParen => "')'".into(),
        Token::LBracket => "'['".into(),
        Token::RBracket => "']'".into(),
        Token::Word(w) => format!("{w:?}"),
        Token::Literal(v) => v.to_string(),
    }
}

/// Parses a filter expression.
pub fn parse(s: &str) -> Result<Filter, ParseError> {
    if s.len() > MAX_LEN {
        return Err(ParseError::TooLong("filter"));
    }
    let mut p = Parser {
        tokens: tokenize(s)?,
        at: 0,
        depth: 0,
    };
    if p.tokens.is_empty() {
        return Err(ParseError::Empty);
    }
    let f = p.or(false)?;
    match p.next() {
        None => Ok(f),
        Some(t) => Err(ParseError::Unexpected(format!(
            "unexpected {} after the filter",
            describe(&t)
        ))),
    }
}

/// A PATCH path: `attr`, `attr.sub`, `attr[filter]`, `attr[filter].sub`, any with a URN.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after a value filter (`emails[type eq "work"].value`).
    pub sub_after_filter: Option<String>,
}

pub fn parse_path(s: &str) -> Result<PatchPath, ParseError> {
    let s = s.trim();
    if s.len() > MAX_LEN {
        return Err(ParseError::TooLong("path"));
    }
    let Some(open) = s.find('[') else {
        return Ok(PatchPath {
            attr: AttrPath::parse(s)?,
            filter: None,
            sub_after_filter: None,
        });
    };
    let close = s
        .rfind(']')
        .ok_or_else(|| ParseError::Unexpected(format!("missing ']' in {s:?}")))?;
    if close < open {
        return Err(ParseError::Unexpected(format!("bad path {s:?}")));
    }
    let attr = AttrPath::parse(&s[..open])?;
    if attr.sub.is_some() {
        return Err(ParseError::Unexpected(format!(
            "bad path {s:?}: a value filter follows an attribute"
        )));
    }
    let mut p = Parser {
        tokens: tokenize(&s[open + 1..close])?,
        at: 0,
        depth: 1,
    };
    let filter = p.or(true)?;
    if let Some(t) = p.next() {
        return Err(ParseError::Unexpected(format!(
            "unexpected {} in the value filter",
            describe(&t)
        )));
    }
    let rest = &s[close + 1..];
    let sub = match rest.strip_prefix('.') {
        Some(sub) if AttrPath::parse(sub).is_ok_and(|p| p.sub.is_none() && p.urn.is_none()) => {
            Some(sub.to_string())
        }
        None if rest.is_empty() => None,
        _ => return Err(ParseError::Unexpected(format!("bad path {s:?} after ']'"))),
    };
    Ok(PatchPath {
        attr,
        filter: Some(filter),
        sub_after_filter: sub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> AttrPath {
        AttrPath::parse(s).unwrap()
    }

    fn cmp(path: &str, op: Op, v: Value) -> Filter {
        Filter::Compare(p(path), op, v)
    }

    #[test]
    fn precedence_is_grouping_not_and_or() {
        let f = parse(r#"a eq "1" or b eq "2" and c eq "3""#).unwrap();
        assert_eq!(
            f,
            Filter::Or(
                Box::new(cmp("a", Op::Eq, json!("1"))),
                Box::new(Filter::And(
                    Box::new(cmp("b", Op::Eq, json!("2"))),
                    Box::new(cmp("c", Op::Eq, json!("3")))
                ))
            )
        );
        let f = parse(r#"(a eq "1" or b eq "2") and not (c pr)"#).unwrap();
        assert_eq!(
            f,
            Filter::And(
                Box::new(Filter::Or(
                    Box::new(cmp("a", Op::Eq, json!("1"))),
                    Box::new(cmp("b", Op::Eq, json!("2")))
                )),
                Box::new(Filter::Not(Box::new(Filter::Present(p("c")))))
            )
        );
    }

    #[test]
    fn every_operator_and_literal_case_insensitively() {
        for (word, op) in [
            ("eq", Op::Eq),
            ("NE", Op::Ne),
            ("Co", Op::Co),
            ("sw", Op::Sw),
            ("EW", Op::Ew),
            ("gt", Op::Gt),
            ("ge", Op::Ge),
            ("lt", Op::Lt),
            ("LE", Op::Le),
        ] {
            assert_eq!(
                parse(&format!("x {word} 1")).unwrap(),
                cmp("x", op, json!(1))
            );
        }
        assert_eq!(
            parse("active Eq TRUE").unwrap(),
            cmp("active", Op::Eq, json!(true))
        );
        assert_eq!(parse("x eq null").unwrap(), cmp("x", Op::Eq, Value::Null));
        assert_eq!(parse("x eq -1.5").unwrap(), cmp("x", Op::Eq, json!(-1.5)));
        assert_eq!(parse("title PR").unwrap(), Filter::Present(p("title")));
        assert_eq!(
            parse(r#"x eq "a \"q\" \u00e9""#).unwrap(),
            cmp("x", Op::Eq, json!("a \"q\" é"))
        );
        assert_eq!(
            parse("a eq 1 AND b eq 2").unwrap(),
            Filter::And(
                Box::new(cmp("a", Op::Eq, json!(1))),
                Box::new(cmp("b", Op::Eq, json!(2)))
            )
        );
    }

    #[test]
    fn value_paths_sub_attributes_and_urns() {
        assert_eq!(
            parse(r#"emails[type eq "work" and value co "@x"]"#).unwrap(),
            Filter::ValuePath(
                p("emails"),
                Box::new(Filter::And(
                    Box::new(cmp("type", Op::Eq, json!("work"))),
                    Box::new(cmp("value", Op::Co, json!("@x")))
                ))
            )
        );
        assert_eq!(
            parse(r#"emails[type eq "work"].value eq "a@b.example""#).unwrap(),
            Filter::ValuePath(
                p("emails"),
                Box::new(Filter::And(
                    Box::new(cmp("type", Op::Eq, json!("work"))),
                    Box::new(cmp("value", Op::Eq, json!("a@b.example")))
                ))
            )
        );
        assert!(matches!(
            parse(r#"emails[type eq "work"].value pr and active eq true"#).unwrap(),
            Filter::And(..)
        ));
        assert!(parse(r#"emails[type eq "work"].x:y eq "a""#).is_err());
        assert!(parse(r#"emails[type eq "work"].value"#).is_err());
        assert!(parse(r#"userName eq "a\u0000b""#).is_err());
        assert!(parse("userName eq \"a\0b\"").is_err());
        let f = parse(r#"name.familyName sw "O""#).unwrap();
        assert_eq!(f, cmp("name.familyName", Op::Sw, json!("O")));
        let Filter::Compare(path, ..) = parse(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "1""#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            path.urn.as_deref(),
            Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
        assert_eq!(
            (path.attr.as_str(), path.sub.as_deref()),
            ("manager", Some("value"))
        );
    }

    #[test]
    fn bad_filters_are_errors() {
        for bad in [
            "",
            "userName",
            "userName eq",
            "userName zz \"x\"",
            "userName eq \"x",
            "(userName eq \"x\"",
            "userName eq \"x\")",
            "not userName eq \"x\"",
            "emails[type eq \"work\"",
            "emails[types[a eq 1]]",
            "userName eq \"x\" and",
            "userName eq \"x\" userName",
            "1 eq 1",
            "a.b.c eq 1",
            "x eq 1e999999",
            "\"x\" eq \"x\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}a pr{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(parse(&deep).unwrap_err(), ParseError::TooDeep);
        assert_eq!(
            parse(&"a pr or ".repeat(1000)).unwrap_err(),
            ParseError::TooLong("filter")
        );
        assert_eq!(parse("  ").unwrap_err(), ParseError::Empty);
    }

    #[test]
    fn patch_paths() {
        let pp = parse_path(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(pp.attr, p("emails"));
        assert_eq!(pp.filter, Some(cmp("type", Op::Eq, json!("work"))));
        assert_eq!(pp.sub_after_filter.as_deref(), Some("value"));
        let pp = parse_path(r#"members[value eq "2819c223"]"#).unwrap();
        assert_eq!(pp.sub_after_filter, None);
        assert_eq!(
            parse_path("name.givenName").unwrap().attr,
            p("name.givenName")
        );
        assert!(parse_path("emails[type eq \"work\"]x").is_err());
        assert!(parse_path("emails]").is_err());
    }

    /// Arbitrary input never panics: random strings over the filter's alphabet and random
    /// splices of valid filters.
    #[test]
    fn arbitrary_input_never_panics() {
        let pieces = [
            "userName", " eq ", " ne ", " co ", " pr", " and ", " or ", "not", "(", ")", "[", "]",
            "\"x\"", "\"", "\\", "true", "1", "-", ".", ":", "urn:a:b", "emails", "é", " ",
            "\u{0}", "value", "1e5", "]].", "[[",
        ];
        for _ in 0..20_000 {
            let n = rand::random_range(0..12);
            let s: String = (0..n)
                .map(|_| pieces[rand::random_range(0..pieces.len())])
                .collect();
            let _ = parse(&s);
            let _ = parse_path(&s);
            let bytes: Vec<u8> = (0..rand::random_range(0..24))
                .map(|_| rand::random_range(0..=255u8))
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse(&s);
            let _ = parse_path(&s);
        }
    }
}
