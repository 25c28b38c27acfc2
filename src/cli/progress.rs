//! The progress indicators of long commands, on stderr: a bar drawn in place (indicatif)
//! on a terminal; elsewhere (stderr redirected to a file or a pipe) a plain line at the
//! first update, every [`PLAIN_EVERY`] and at each tenth of the work, so that a logged run
//! is never silent. Both show the time left, estimated from the units done since the first
//! one of this run (a teacher pass before it, or a resumed run's earlier work, does not
//! count).
use indicatif::{HumanDuration, ProgressBar, ProgressStyle};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a plain progress line is written at least (while the work moves on).
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// A progress bar over `len` units (see the module docs).
pub struct Bar {
    pb: ProgressBar,
    /// What a plain line says before the position, and after it.
    prefix: String,
    suffix: String,
    /// `None` on a terminal.
    plain: Option<Mutex<Plain>>,
    rate: Mutex<Rate>,
}

/// When the last plain line was written, and at which tenth of the work.
#[derive(Default)]
struct Plain {
    last: Option<(Instant, u64)>,
}

/// The first position set, and the first one after it: the rate counts from there.
#[derive(Default)]
struct Rate {
    baseline: Option<u64>,
    first: Option<(Instant, u64)>,
}

/// A bar over `len` items: `elapsed [====>    ] pos/len what`.
pub fn bar(len: u64, what: &str) -> Bar {
    Bar::new(len, "", "", what)
}

/// A bar over `len` optimizer steps: `elapsed [====>    ] step pos/len what`.
pub fn steps(len: u64, what: &str) -> Bar {
    Bar::new(len, "step ", "", what)
}

/// A bar over `len` units of work named `unit`: `elapsed [====>    ] pos/len unit message`.
pub fn work(len: u64, unit: &str) -> Bar {
    Bar::new(len, "", &format!(" {unit}"), "")
}

impl Bar {
    fn new(len: u64, prefix: &str, suffix: &str, msg: &str) -> Bar {
        let pb = ProgressBar::new(len);
        let template = format!("{{elapsed_precise}} [{{bar:30}}] {prefix}{{pos}}/{{len}}{suffix} (eta {{eta}}) {{msg}}");
        pb.set_style(ProgressStyle::with_template(&template).expect("a valid progress template").progress_chars("=> "));
        pb.set_message(msg.to_string());
        let plain = pb.is_hidden().then(|| Mutex::new(Plain::default()));
        Bar { pb, prefix: prefix.into(), suffix: suffix.into(), plain, rate: Mutex::default() }
    }

    pub fn set_position(&self, pos: u64) {
        self.pb.set_position(pos);
        self.moved();
    }

    pub fn set_length(&self, len: u64) {
        self.pb.set_length(len);
    }

    /// Start over on other work of `len` units (the rate counts from its first unit).
    pub fn restart(&self, len: u64) {
        *self.rate.lock().expect("progress state") = Rate::default();
        self.pb.set_length(len);
        self.pb.set_position(0);
        self.pb.reset_eta();
    }

    /// Position and message at once (one plain line at most).
    pub fn update(&self, pos: u64, msg: String) {
        self.pb.set_message(msg);
        self.set_position(pos);
    }

    /// A line on stderr that stays (above the bar on a terminal).
    pub fn println(&self, line: &str) {
        self.pb.suspend(|| eprintln!("{line}"));
    }

    pub fn finish_and_clear(&self) {
        self.plain_line(true);
        self.pb.finish_and_clear();
    }

    /// The time the remaining units take at the rate since the first unit of this run, once
    /// two more units are done (the first pays for warming up: kernels compiled, buffers made).
    pub fn remaining(&self) -> Option<Duration> {
        let (pos, len) = (self.pb.position(), self.pb.length().unwrap_or(0));
        let (t, first) = self.rate.lock().expect("progress state").first?;
        (pos >= first + 2).then(|| t.elapsed().div_f64((pos - first) as f64).mul_f64(len.saturating_sub(pos) as f64))
    }

    /// Note where the rate counts from (see [`Rate`]), then write a plain line if one is due.
    fn moved(&self) {
        let pos = self.pb.position();
        {
            let mut r = self.rate.lock().expect("progress state");
            match (r.baseline, r.first) {
                (None, _) => r.baseline = Some(pos),
                (Some(b), None) if pos > b => {
                    r.first = Some((Instant::now(), pos));
                    // the bar's own estimate forgets the start-up too
                    self.pb.reset_eta();
                }
                _ => {}
            }
        }
        self.plain_line(false);
    }

    /// Without a terminal: a line when the first update comes, [`PLAIN_EVERY`] after the
    /// last line, when the work crosses a tenth, or (`finishing`) when the last line is stale.
    fn plain_line(&self, finishing: bool) {
        let Some(plain) = &self.plain else { return };
        let mut p = plain.lock().expect("progress state");
        let (pos, len) = (self.pb.position(), self.pb.length().unwrap_or(0));
        let tenth = |x: u64| (x * 10).checked_div(len).unwrap_or(0);
        let due = match p.last {
            None => true,
            Some((_, at)) if finishing => at != pos,
            Some((t, at)) => t.elapsed() >= PLAIN_EVERY || tenth(pos) > tenth(at),
        };
        if !due {
            return;
        }
        p.last = Some((Instant::now(), pos));
        let pct = if len == 0 { 0.0 } else { 100.0 * pos as f64 / len as f64 };
        let left = self.remaining().map_or(String::new(), |d| format!(", about {} left", HumanDuration(d)));
        let msg = self.pb.message();
        let msg = if msg.is_empty() { String::new() } else { format!(": {msg}") };
        eprintln!("[{}] {}{pos}/{len}{} ({pct:.0}%){left}{msg}", HumanDuration(self.pb.elapsed()), self.prefix, self.suffix);
    }
}

/// A spinner showing `msg` until it is finished.
pub fn spinner(msg: String) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_message(msg);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}
