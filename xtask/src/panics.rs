//! The reasons of failed tests, repeated at the end of a run.
//!
//! With backtraces on, each failure in libtest's summary is followed by dozens of frames, so
//! the end of a long log (often all a CI page shows) lists which tests failed but not why.
//! The test output passes through unchanged; each panic's headline (where, and the message)
//! is kept and printed once more after the run.

use std::io::{BufRead, BufReader, Read, Write};

/// Lines kept per panic: the `panicked at` line and the start of its message.
const MESSAGE_LINES: usize = 6;

/// Copies `output` to this process's stdout line by line and returns the headline of every
/// panic in it, in order.
pub fn echo_and_collect(output: impl Read) -> Vec<String> {
    let mut panics = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut stdout = std::io::stdout();
    for line in BufReader::new(output).split(b'\n') {
        let Ok(line) = line else { break };
        let _ = stdout.write_all(&line);
        let _ = stdout.write_all(b"\n");
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.contains("' panicked at ") || text.contains(") panicked at ") {
            if let Some(done) = current.take() {
                panics.push(done.join("\n"));
            }
            current = Some(vec![text]);
            continue;
        }
        if let Some(lines) = current.as_mut() {
            let ends = text.is_empty()
                || text.starts_with("stack backtrace:")
                || text.starts_with("note: ")
                || lines.len() >= MESSAGE_LINES;
            if ends {
                panics.push(lines.join("\n"));
                current = None;
            } else {
                lines.push(text);
            }
        }
    }
    if let Some(done) = current {
        panics.push(done.join("\n"));
    }
    let _ = stdout.flush();
    panics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_where_and_why_and_drops_the_backtrace() {
        let log = "running 2 tests\n\
            test a ... FAILED\n\
            ---- a stdout ----\n\
            \n\
            thread 'a' (123) panicked at tests/a.rs:4:5:\n\
            assertion `left == right` failed\n  left: 1\n right: 2\n\
            stack backtrace:\n   0: std::panicking::begin_panic\n\
            thread 'b' panicked at tests/b.rs:9:1:\n\
            no event within 30s\n\
            note: run with `RUST_BACKTRACE=1`\n";
        let panics = echo_and_collect(log.as_bytes());
        assert_eq!(
            panics,
            vec![
                "thread 'a' (123) panicked at tests/a.rs:4:5:\n\
                 assertion `left == right` failed\n  left: 1\n right: 2",
                "thread 'b' panicked at tests/b.rs:9:1:\nno event within 30s",
            ]
        );
    }
}
