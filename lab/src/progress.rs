//! Progress of long lab operations on a terminal: a spinner or a bar on
//! stderr with what is running and for how long. Nothing is drawn when
//! stderr is not a terminal (piped, CI) or when the caller asked for quiet
//! output (`--json`), so reports on stdout stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A spinner (no total) or a bar (`total` steps); hidden when quiet.
#[derive(Debug)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A spinner when `total` is 0, else a bar of `total` steps.
    pub fn new(total: u64, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = if total == 0 {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("a valid template"),
            )
        } else {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("[{elapsed}] {bar:30} {pos}/{len} {msg}")
                    .expect("a valid template"),
            )
        };
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    /// Says what runs now.
    pub fn message(&self, message: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.into());
        }
    }

    /// One step done; `message` says what runs next.
    pub fn step(&self, message: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
            bar.set_message(message.into());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
