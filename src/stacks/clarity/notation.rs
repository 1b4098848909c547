//! The Clarity notation: values written as Clarity literals (`(tuple (a u1))`, `'ST…`), and
//! parsed back (the tools and the tests).
//!
//! It must not: be used to decode what the node or a request sends (that is `decode.rs`).

use std::fmt;

use super::*;

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Standard(a) => write!(f, "{a}"),
            Principal::Contract(a, n) => write!(f, "{a}.{n}"),
        }
    }
}

impl std::str::FromStr for Principal {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('.') {
            None => Ok(Principal::Standard(
                s.parse().map_err(DecodeError::BadPrincipal)?,
            )),
            Some((a, n)) => {
                let valid = !n.is_empty()
                    && n.len() <= 128
                    && n.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
                if !valid {
                    return Err(DecodeError::BadName);
                }
                Ok(Principal::Contract(
                    a.parse().map_err(DecodeError::BadPrincipal)?,
                    n.to_string(),
                ))
            }
        }
    }
}

/// Clarity notation, as `cvToString` in @stacks/transactions writes it.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "u{u}"),
            Value::Buffer(b) => write!(f, "0x{}", hex::encode(b)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Principal(p) => write!(f, "{p}"),
            Value::Ok(v) => write!(f, "(ok {v})"),
            Value::Err(v) => write!(f, "(err {v})"),
            Value::None => write!(f, "none"),
            Value::Some(v) => write!(f, "(some {v})"),
            Value::List(items) => {
                write!(f, "(list")?;
                for i in items {
                    write!(f, " {i}")?;
                }
                write!(f, ")")
            }
            Value::Tuple(fields) => {
                write!(f, "(tuple")?;
                for (k, v) in fields {
                    write!(f, " ({k} {v})")?;
                }
                write!(f, ")")
            }
            Value::Ascii(s) => write!(f, "{}", quote(s)),
            Value::Utf8(s) => write!(f, "u{}", quote(s)),
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses Clarity notation (the literals `Display` writes) back into a value.
pub fn parse(text: &str) -> Result<Value, String> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let v = parse_tokens(&tokens, &mut pos, 0)?;
    if pos != tokens.len() {
        return Err(format!("unexpected {:?} after the value", tokens[pos]));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Str(String, bool),
    Atom(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            _ => {
                let mut atom = String::new();
                let mut utf8 = false;
                if c == 'u' {
                    let mut look = chars.clone();
                    look.next();
                    if look.peek() == Some(&'"') {
                        chars.next();
                        utf8 = true;
                    }
                }
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            None => return Err("unterminated string".into()),
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some('r') => s.push('\r'),
                                Some(e @ ('"' | '\\')) => s.push(e),
                                other => return Err(format!("bad escape \\{other:?}")),
                            },
                            Some(ch) => s.push(ch),
                        }
                    }
                    out.push(Token::Str(s, utf8));
                    continue;
                }
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || ch == '(' || ch == ')' {
                        break;
                    }
                    atom.push(ch);
                    chars.next();
                }
                out.push(Token::Atom(atom));
            }
        }
    }
    Ok(out)
}

fn parse_tokens(tokens: &[Token], pos: &mut usize, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deep".into());
    }
    let tok = tokens.get(*pos).ok_or("unexpected end")?.clone();
    *pos += 1;
    match tok {
        Token::Str(s, true) => Ok(Value::Utf8(s)),
        Token::Str(s, false) => {
            if !s
                .bytes()
                .all(|c| (0x20..=0x7e).contains(&c) || matches!(c, b'\t' | b'\n' | b'\r'))
            {
                return Err("string-ascii with non-ASCII characters".into());
            }
            Ok(Value::Ascii(s))
        }
        Token::Close => Err("unexpected )".into()),
        Token::Atom(a) => parse_atom(&a),
        Token::Open => {
            let head = match tokens.get(*pos) {
                Some(Token::Atom(h)) => h.clone(),
                other => return Err(format!("expected a form name, got {other:?}")),
            };
            *pos += 1;
            let mut items = Vec::new();
            let value = match head.as_str() {
                "tuple" => {
                    let mut fields = BTreeMap::new();
                    while tokens.get(*pos) == Some(&Token::Open) {
                        *pos += 1;
                        let key = match tokens.get(*pos) {
                            Some(Token::Atom(k)) => k.clone(),
                            other => return Err(format!("expected a tuple key, got {other:?}")),
                        };
                        *pos += 1;
                        let v = parse_tokens(tokens, pos, depth + 1)?;
                        if tokens.get(*pos) != Some(&Token::Close) {
                            return Err("expected ) after a tuple field".into());
                        }
                        *pos += 1;
                        if fields.insert(key.clone(), v).is_some() {
                            return Err(format!("duplicate tuple key {key}"));
                        }
                    }
                    Value::Tuple(fields)
                }
                "list" | "ok" | "err" | "some" => {
                    while tokens.get(*pos).is_some_and(|t| *t != Token::Close) {
                        items.push(parse_tokens(tokens, pos, depth + 1)?);
                    }
                    let one = |mut items: Vec<Value>| -> Result<Box<Value>, String> {
                        if items.len() != 1 {
                            return Err(format!("({head} ...) takes one value"));
                        }
                        Ok(Box::new(items.remove(0)))
                    };
                    match head.as_str() {
                        "list" => Value::List(items),
                        "ok" => Value::Ok(one(items)?),
                        "err" => Value::Err(one(items)?),
                        _ => Value::Some(one(items)?),
                    }
                }
                other => return Err(format!("unknown form ({other} ...)")),
            };
            if tokens.get(*pos) != Some(&Token::Close) {
                return Err("expected )".into());
            }
            *pos += 1;
            Ok(value)
        }
    }
}

fn parse_atom(a: &str) -> Result<Value, String> {
    match a {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        "none" => return Ok(Value::None),
        _ => {}
    }
    if a.starts_with("0x") {
        // (the decoder takes the one `0x` off)
        return hex::decode(a)
            .map(Value::Buffer)
            .map_err(|e| format!("bad buffer {a}: {e}"));
    }
    if let Some(u) = a.strip_prefix('u') {
        return u
            .parse::<u128>()
            .map(Value::UInt)
            .map_err(|e| format!("bad uint {a}: {e}"));
    }
    if a.starts_with('S') {
        return a
            .parse::<Principal>()
            .map(Value::Principal)
            .map_err(|e| e.to_string());
    }
    if let Some(p) = a.strip_prefix('\'') {
        return p
            .parse::<Principal>()
            .map(Value::Principal)
            .map_err(|e| e.to_string());
    }
    a.parse::<i128>()
        .map(Value::Int)
        .map_err(|_| format!("unknown literal {a}"))
}
