//! Stream ids as NATS subject tokens (docs/jetstream.md, "Subjects").
//!
//! A subject is `{prefix}.p{partition}.{token}`, where the token is the stream id escaped so
//! that it is one token of bytes every NATS server and KV key accepts: ASCII letters, digits,
//! `-` and `_` stand for themselves, and every other byte of the id's UTF-8 (a `.`, `*`, `>`,
//! a space, `=`, any byte of a non-ASCII character) is written `=XY`, its two upper-case hex
//! digits. The escape is a bijection, so two stream ids never share a subject, and the token
//! is also a valid KV key (the snapshot bucket's).

/// The token for `stream`.
pub(crate) fn escape(stream: &str) -> String {
    let mut out = String::with_capacity(stream.len());
    for &b in stream.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push('=');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
    }
    out
}

/// The stream id a token stands for; `None` for a token [`escape`] does not produce (a byte
/// outside the alphabet, `=` not followed by two upper-case hex digits, an escaped byte that
/// stands for itself, or bytes that are not UTF-8).
pub(crate) fn unescape(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'=' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            let v = (hi << 4) | lo;
            if v.is_ascii_alphanumeric() || v == b'-' || v == b'_' {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `prefix` can name JetStream streams and lead subjects: 1 to 32 ASCII letters,
/// digits, `-` or `_`.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    (1..=32).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn hex_digit(v: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(v & 0xf)])
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_characters_nats_gives_a_meaning_are_escaped() {
        assert_eq!(escape("order-17_a"), "order-17_a");
        assert_eq!(escape("a.b"), "a=2Eb");
        assert_eq!(escape("*"), "=2A");
        assert_eq!(escape(">"), "=3E");
        assert_eq!(escape("two words"), "two=20words");
        assert_eq!(escape("a=b"), "a=3Db");
        assert_eq!(escape("{order-1}/pay"), "=7Border-1=7D=2Fpay");
        assert_eq!(escape("café"), "caf=C3=A9");
        assert_eq!(escape("\t\r\n"), "=09=0D=0A");
    }

    #[test]
    fn escaping_round_trips_and_never_merges_two_ids() {
        let ids = ["a", "a.b", "a=2Eb", "*", ">", " ", "=", "==", "café", "日本", "x\u{7f}", "-_", "A"];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let t = escape(id);
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='), "{t}");
            assert_eq!(unescape(&t).as_deref(), Some(id));
            assert!(seen.insert(t), "{id}");
        }
    }

    #[test]
    fn tokens_escape_does_not_make_are_refused() {
        for t in ["a.b", "=2", "=2e", "=41", "a b", "=C3", "*", ">", "=ZZ"] {
            assert_eq!(unescape(t), None, "{t}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("STRATA"));
        assert!(valid_prefix("app-1_x"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a.b"));
        assert!(!valid_prefix("a*"));
        assert!(!valid_prefix(&"x".repeat(33)));
    }
}
