//! Text a guest controls (a result's request id, a runtime's init error,
//! the boot console, a jailed VMM's stderr) made fit for a log line or an
//! error: bounded to [`GUEST_TEXT_MAX`] bytes and escaped the way `Debug`
//! escapes a string (quoted; `\n`, `\r`, `"`, `\\` and control characters
//! escaped), so that it can neither forge a log line nor fill the disk.

/// The most bytes a piece of guest text takes in a log line or an error,
/// quotes, escapes and the note on what was left out included.
pub const GUEST_TEXT_MAX: usize = 1024;

/// Room kept for the note on how many bytes were left out.
const NOTE: usize = 48;

/// The start of `text`, bounded and escaped (see the module's doc).
pub fn guest_text(text: &str) -> String {
    bounded(text, false)
}

/// The end of `text` (for a console or log tail), bounded and escaped.
pub fn guest_text_tail(text: &str) -> String {
    bounded(text, true)
}

fn bounded(text: &str, keep_end: bool) -> String {
    // Two for the quotes.
    let budget = GUEST_TEXT_MAX - NOTE - 2;
    let mut pieces: Vec<String> = Vec::new();
    let (mut escaped, mut kept) = (0usize, 0usize);
    let mut take = |c: char| {
        // As `Debug` for a string: a single quote stays as it is.
        let e: String = match c {
            '\'' => "'".into(),
            c => c.escape_debug().collect(),
        };
        if escaped + e.len() > budget {
            return false;
        }
        escaped += e.len();
        kept += c.len_utf8();
        pieces.push(e);
        true
    };
    if keep_end {
        for c in text.chars().rev() {
            if !take(c) {
                break;
            }
        }
        pieces.reverse();
    } else {
        for c in text.chars() {
            if !take(c) {
                break;
            }
        }
    }
    let body = pieces.concat();
    match text.len() - kept {
        0 => format!("\"{body}\""),
        left if keep_end => format!("({left} earlier bytes left out) \"{body}\""),
        left => format!("\"{body}\" ({left} more bytes left out)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_and_escaped() {
        assert_eq!(guest_text("a\nb\"c'\u{1b}[2J"), r#""a\nb\"c'\u{1b}[2J""#);
        assert_eq!(guest_text_tail("x\r\ny"), r#""x\r\ny""#);
        assert_eq!(guest_text(""), r#""""#);
    }

    #[test]
    fn long_text_is_bounded_from_the_end_asked_for() {
        let text = format!("start{}\n{}end", "é".repeat(100_000), "\n".repeat(5_000));
        let head = guest_text(&text);
        let tail = guest_text_tail(&text);
        for t in [&head, &tail] {
            assert!(t.len() <= GUEST_TEXT_MAX, "{} bytes", t.len());
            assert!(!t.contains('\n'), "{t}");
        }
        assert!(head.starts_with("\"startéé"), "{head}");
        assert!(head.ends_with("more bytes left out)"), "{head}");
        assert!(tail.ends_with("\\n\\nend\""), "{tail}");
        assert!(tail.starts_with('('), "{tail}");
    }
}
