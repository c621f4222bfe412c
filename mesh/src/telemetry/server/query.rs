//! Reads one parameter from a URL query string (`application/x-www-form-urlencoded` rules:
//! `%XX` escapes and `+` for space). Log filters contain `,` and `=`, which clients send
//! either raw or escaped, so both must decode to the same text.

/// Why a query could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// The parameter appears more than once, so which one was meant is unclear.
    Repeated,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueryError::BadEscape => "a `%` escape is not followed by two hex digits",
            QueryError::NotUtf8 => "the decoded value is not UTF-8",
            QueryError::Repeated => "the parameter is given more than once",
        })
    }
}

/// The decoded value of `key`, or `None` if absent. The first `=` separates key from value, so
/// `level=info,access=warn` yields `info,access=warn`.
pub(crate) fn param(query: Option<&str>, key: &str) -> Result<Option<String>, QueryError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k)? != key {
            continue;
        }
        if found.is_some() {
            return Err(QueryError::Repeated);
        }
        found = Some(decode(v)?);
    }
    Ok(found)
}

fn decode(s: &str) -> Result<String, QueryError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(crate::parse::hex_digit).ok_or(QueryError::BadEscape)?;
                let lo = bytes.next().and_then(crate::parse::hex_digit).ok_or(QueryError::BadEscape)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_raw_and_escaped_filters() {
        assert_eq!(param(Some("level=info,access=warn"), "level"), Ok(Some("info,access=warn".into())));
        assert_eq!(param(Some("x=1&level=info%2Caccess%3Dwarn"), "level"), Ok(Some("info,access=warn".into())));
        assert_eq!(param(Some("level=a+b"), "level"), Ok(Some("a b".into())));
        assert_eq!(param(Some("level"), "level"), Ok(Some(String::new())));
        assert_eq!(param(Some("other=1"), "level"), Ok(None));
        assert_eq!(param(None, "level"), Ok(None));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(param(Some("level=%"), "level"), Err(QueryError::BadEscape));
        assert_eq!(param(Some("level=%4"), "level"), Err(QueryError::BadEscape));
        assert_eq!(param(Some("level=%zz"), "level"), Err(QueryError::BadEscape));
        assert_eq!(param(Some("level=%ff"), "level"), Err(QueryError::NotUtf8));
        assert_eq!(param(Some("level=a&level=b"), "level"), Err(QueryError::Repeated));
        // Multi-byte UTF-8 split by an escape must not panic.
        assert_eq!(param(Some("level=é%"), "level"), Err(QueryError::BadEscape));
    }
}
