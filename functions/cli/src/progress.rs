//! Progress for long commands: a bar on a terminal, plain lines otherwise (a log, a pipe, CI).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use shared::reconcile::Progress;

/// How often the plain-line form reports within a phase.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One phase as the plain-line form counts it.
struct Phase {
    name: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Phase {
    /// `name: done/total (rate/s, about N s left)`, or without the total when it is unknown.
    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        // Progress counts stay far below 2^52, so the conversions are exact.
        #[allow(clippy::cast_precision_loss)]
        let rate = self.done as f64 / elapsed;
        match self.total {
            Some(total) if rate > 0.0 => {
                #[allow(clippy::cast_precision_loss)]
                let left = total.saturating_sub(self.done) as f64 / rate;
                format!("{}: {}/{total} ({rate:.0}/s, about {left:.0} s left)", self.name, self.done)
            }
            Some(total) => format!("{}: {}/{total}", self.name, self.done),
            None => format!("{}: {} ({rate:.0}/s)", self.name, self.done),
        }
    }
}

/// Draws progress on standard error.
pub struct Bars {
    bar: Option<Mutex<Option<ProgressBar>>>,
    phase: Mutex<Option<Phase>>,
}

impl Bars {
    /// A bar when standard error is a terminal, else plain lines.
    pub fn on_stderr() -> Self {
        let terminal = std::io::stderr().is_terminal();
        Self { bar: terminal.then(|| Mutex::new(None)), phase: Mutex::new(None) }
    }

    fn end_plain_phase(phase: &mut Option<Phase>) {
        if let Some(phase) = phase.take() {
            eprintln!("{} done", phase.line());
        }
    }
}

impl Progress for Bars {
    fn phase(&self, name: &str, total: Option<u64>) {
        match &self.bar {
            Some(bar) => {
                let mut bar = bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(done) = bar.take() {
                    done.finish();
                }
                let (next, template) = match total {
                    Some(total) => {
                        (ProgressBar::new(total), "{msg:18} [{bar:32}] {pos}/{len} {per_sec} eta {eta}")
                    }
                    None => (ProgressBar::new_spinner(), "{msg:18} {spinner} {pos} {per_sec} {elapsed}"),
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    next.set_style(style.progress_chars("=> "));
                }
                next.set_message(name.to_owned());
                next.enable_steady_tick(Duration::from_millis(200));
                *bar = Some(next);
            }
            None => {
                let mut phase = self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                Self::end_plain_phase(&mut phase);
                let now = Instant::now();
                *phase = Some(Phase { name: name.to_owned(), total, done: 0, started: now, last_line: now });
            }
        }
    }

    fn advance(&self, count: u64) {
        match &self.bar {
            Some(bar) => {
                if let Some(bar) = bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
                    bar.inc(count);
                }
            }
            None => {
                let mut phase = self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(phase) = phase.as_mut() {
                    phase.done += count;
                    if phase.last_line.elapsed() >= PLAIN_EVERY {
                        phase.last_line = Instant::now();
                        eprintln!("{}", phase.line());
                    }
                }
            }
        }
    }

    fn finish(&self) {
        match &self.bar {
            Some(bar) => {
                if let Some(done) = bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                    done.finish();
                }
            }
            None => Self::end_plain_phase(
                &mut self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_gives_the_count_the_rate_and_the_time_left() {
        let started = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        let phase = Phase {
            name: "checking accounts".to_owned(),
            total: Some(300),
            done: 100,
            started,
            last_line: started,
        };
        let line = phase.line();
        assert!(line.starts_with("checking accounts: 100/300 (10/s, about 20 s left)"), "{line}");
        let open = Phase { total: None, ..phase };
        assert!(open.line().starts_with("checking accounts: 100 (10/s)"), "{}", open.line());
    }
}
