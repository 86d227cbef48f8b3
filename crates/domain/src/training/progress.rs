//! Training progress from fal's log lines. fal reports no percentage, but trainers log their
//! step counter in a few shapes; the last one seen is the progress.

/// Progress 0..=1 from fal log lines: the last "step N/M" (also "N/M steps", "Step N of M",
/// tqdm-like "34%|...| 340/1000"), as N/M; `None` when no line has one.
pub fn progress_from_logs<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<f64> {
    lines
        .into_iter()
        .filter_map(progress_in_line)
        .last()
        .map(|(done, total)| (done as f64 / total as f64).min(1.0))
}

/// Progress in tenths: a training's progress is announced once per tenth, not per log line.
fn progress_step(progress: Option<f64>) -> i64 {
    progress.map_or(0, |p| (p.clamp(0.0, 1.0) * 10.0).floor() as i64)
}

/// Whether moving from `before` to `after` crosses into a new tenth (and so is announced).
pub fn progress_step_crossed(before: Option<f64>, after: Option<f64>) -> bool {
    progress_step(after) > progress_step(before)
}

/// The last step counter in one line, as (done, total).
fn progress_in_line(line: &str) -> Option<(u64, u64)> {
    let lower = line.to_ascii_lowercase();
    let is_tqdm = lower.contains("%|");
    fractions(&lower)
        .into_iter()
        .filter(|f| f.total > 0 && f.done <= f.total)
        .filter(|f| is_tqdm || names_steps(&lower, f))
        .map(|f| (f.done, f.total))
        .next_back()
}

/// "N/M" or "N of M" found in a line, with its byte span.
struct Fraction {
    done: u64,
    total: u64,
    start: usize,
    end: usize,
}

/// A counter counts steps when "step"/"steps" (or "iteration") directly precedes or follows it:
/// "step 340/1000", "Step: 340/1000", "340/1000 steps", "step 340 of 1000". This keeps
/// "epoch 1/10" or "image 3/20" from passing for training progress.
fn names_steps(lower: &str, fraction: &Fraction) -> bool {
    let before = lower[..fraction.start].trim_end_matches(|c: char| c == ':' || c.is_whitespace());
    let after = lower[fraction.end..].trim_start();
    let counts = ["steps", "step", "iterations", "iteration", "iters", "iter"];
    counts.iter().any(|word| before.ends_with(word)) || counts.iter().any(|w| after.starts_with(w))
}

fn fractions(lower: &str) -> Vec<Fraction> {
    let bytes = lower.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // A number starts here only if it is not the tail of a longer token ("v1/2" is no count).
        let starts_number =
            bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !starts_number {
            i += 1;
            continue;
        }
        let (done, after_done) = number(bytes, i);
        match separator(bytes, after_done).and_then(|next| {
            let (total, end) = number(bytes, next);
            (end > next && !bytes.get(end).is_some_and(u8::is_ascii_alphanumeric))
                .then_some((total, end))
        }) {
            Some((total, end)) => {
                if let (Some(done), Some(total)) = (done, total) {
                    found.push(Fraction {
                        done,
                        total,
                        start: i,
                        end,
                    });
                }
                i = end;
            }
            None => i = after_done.max(i + 1),
        }
    }
    found
}

/// The digits at `start`, parsed, and the index after them.
fn number(bytes: &[u8], start: usize) -> (Option<u64>, usize) {
    let end = start
        + bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    let value = std::str::from_utf8(&bytes[start..end])
        .ok()
        .and_then(|digits| digits.parse().ok());
    (value, end)
}

/// After a number: "/" (spaces allowed around it) or " of ", returning where the next number
/// should begin.
fn separator(bytes: &[u8], at: usize) -> Option<usize> {
    let skip_spaces = |mut j: usize| {
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        j
    };
    let j = skip_spaces(at);
    if bytes.get(j) == Some(&b'/') {
        return Some(skip_spaces(j + 1));
    }
    if j > at && bytes[j..].starts_with(b"of ") {
        return Some(skip_spaces(j + 3));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_announced_once_per_tenth() {
        assert!(progress_step_crossed(None, Some(0.1)));
        assert!(!progress_step_crossed(None, Some(0.09)));
        assert!(!progress_step_crossed(Some(0.31), Some(0.39)));
        assert!(progress_step_crossed(Some(0.39), Some(0.4)));
        assert!(!progress_step_crossed(Some(0.5), Some(0.2)));
        assert!(!progress_step_crossed(Some(1.0), Some(1.5)));
    }

    fn progress(lines: &[&str]) -> Option<f64> {
        progress_from_logs(lines.iter().copied())
    }

    #[test]
    fn reads_step_n_of_m_formats() {
        assert_eq!(progress(&["step 250/1000"]), Some(0.25));
        assert_eq!(progress(&["Step: 500/1000, loss=0.12"]), Some(0.5));
        assert_eq!(progress(&["Training Step 100 of 400"]), Some(0.25));
        assert_eq!(progress(&["[trainer] 750/1000 steps done"]), Some(0.75));
        assert_eq!(progress(&["STEP 3 / 4"]), Some(0.75));
        assert_eq!(progress(&["iteration 50/200"]), Some(0.25));
    }

    #[test]
    fn reads_tqdm_bars() {
        assert_eq!(
            progress(&[" 34%|███▍      | 340/1000 [02:01<03:55,  2.80it/s]"]),
            Some(0.34)
        );
        assert_eq!(
            progress(&["100%|██████████| 1000/1000 [06:00<00:00]"]),
            Some(1.0)
        );
    }

    #[test]
    fn the_last_counter_wins() {
        let logs = [
            "Preparing dataset: 12 images",
            "step 100/1000",
            "step 200/1000 loss 0.3",
            "saving checkpoint",
        ];
        assert_eq!(progress(&logs), Some(0.2));
        assert_eq!(progress(&["step 1/10 then step 3/10"]), Some(0.3));
    }

    #[test]
    fn ignores_lines_without_step_counters() {
        assert_eq!(progress(&[]), None);
        assert_eq!(
            progress(&["Loading model", "epoch 1/10", "image 3/20 captioned"]),
            None
        );
        assert_eq!(progress(&["date 2026/11/23"]), None);
        assert_eq!(progress(&["step 0/0"]), None);
        assert_eq!(progress(&["step 5/4"]), None);
        assert_eq!(progress(&["model v1/2 step"]), None);
    }

    #[test]
    fn unrelated_lines_after_a_counter_keep_it() {
        assert_eq!(
            progress(&["step 300/1000", "epoch 2/10", "uploading weights"]),
            Some(0.3)
        );
    }

    #[test]
    fn handles_non_ascii_text() {
        assert_eq!(progress(&["шаг — step 10/100 ✓"]), Some(0.1));
    }
}
