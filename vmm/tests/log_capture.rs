//! The test-log capture of `common::logs` keeps a log line that another
//! thread, with no subscriber, reached first (see that module's doc).

mod common;

use common::logs::{capture, LogMeter};

/// A log line reached only by this test.
fn the_line() {
    tracing::warn!(marker = "pinned", "a line first reached elsewhere");
}

/// The capture is in place when another thread, with no subscriber, is the
/// first to reach a log line: the capturing thread still gets that line.
#[test]
fn a_line_first_reached_by_a_thread_without_a_subscriber_is_still_captured() {
    let meter = LogMeter::default();
    let writer = meter.clone();
    let _log = capture(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    std::thread::spawn(the_line).join().unwrap();
    the_line();
    let (_, lines, out) = meter.read();
    assert_eq!(lines, 1, "{out:?}");
    assert!(out.contains(r#"marker="pinned""#), "{out}");
}
