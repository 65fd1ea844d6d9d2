//! Build progress: a spinner with the current step on a terminal, plain numbered lines
//! otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    step: usize,
    started: Instant,
    step_started: Instant,
    current: String,
}

impl Progress {
    pub fn new(total: usize, force_plain: bool) -> Self {
        let bar = (!force_plain && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                    .expect("progress template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            total,
            step: 0,
            started: Instant::now(),
            step_started: Instant::now(),
            current: String::new(),
        }
    }

    /// Adds `n` steps to the total (the variant's extra disk formats, known once it is loaded).
    pub fn add_steps(&mut self, n: usize) {
        self.total += n;
        if let Some(bar) = &self.bar {
            bar.set_length(self.total as u64);
        }
    }

    /// Starts the next step; the previous one is reported done with its duration.
    pub fn step(&mut self, message: &str) {
        self.finish_step();
        self.step += 1;
        self.current = message.to_owned();
        self.step_started = Instant::now();
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.step as u64 - 1);
                bar.set_message(message.to_owned());
            }
            None => eprintln!("[{}/{}] {message}", self.step, self.total),
        }
    }

    fn finish_step(&mut self) {
        if self.step == 0 {
            return;
        }
        let line = format!(
            "[{}/{}] {} done in {:.1}s",
            self.step,
            self.total,
            self.current,
            self.step_started.elapsed().as_secs_f64()
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(mut self, message: &str) {
        self.finish_step();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{message} in {:.1}s", self.started.elapsed().as_secs_f64());
    }
}
