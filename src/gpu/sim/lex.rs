//! Tokens of PTX source: identifiers (including `%reg`, `$label`, `.directive` and dotted
//! opcodes such as `ld.global.nc.v4.f32`), numbers, strings and punctuation, each with its
//! line number. Comments are dropped here.

use crate::error::{Error, Result};

/// One token.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// An identifier, directive, opcode, register or label name.
    Ident(String),
    /// A numeric literal, as written (interpreted by the parser).
    Num(String),
    /// A string literal (only `.pragma` uses them).
    Str(String),
    /// A punctuation character: `{ } ( ) [ ] , ; : @ ! | + - < > =`.
    Punct(char),
}

/// A token and the 1-based line it started on.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Source line.
    pub line: u32,
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || matches!(c, '_' | '$' | '%' | '.')
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.')
}

/// Splits `src` into tokens. `what` names the module for messages.
pub fn tokenize(src: &str, what: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1u32;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            if i >= chars.len() {
                return Err(Error::format(
                    what,
                    format!("line {line}: unterminated string"),
                ));
            }
            out.push(Token {
                tok: Tok::Str(chars[start..i].iter().collect()),
                line,
            });
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Num(chars[start..i].iter().collect()),
                line,
            });
        } else if ident_start(c) {
            let start = i;
            i += 1;
            loop {
                if i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                } else if i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':' {
                    // `.shared::cta`, `.L2::128B`: the double colon is part of a modifier.
                    i += 2;
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                line,
            });
        } else if "{}()[],;:@!|+-<>=".contains(c) {
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        } else {
            return Err(Error::format(
                what,
                format!("line {line}: unexpected character {c:?}"),
            ));
        }
    }
    Ok(out)
}
