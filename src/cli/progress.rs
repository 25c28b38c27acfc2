//! The progress indicators of long commands (indicatif, on stderr; hidden when stderr is
//! not a terminal).
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// A bar over `len` items: `elapsed [====>    ] pos/len what`.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    styled(len, "", what)
}

/// A bar over `len` optimizer steps: `elapsed [====>    ] step pos/len what`.
pub fn steps(len: u64, what: &str) -> ProgressBar {
    styled(len, "step ", what)
}

fn styled(len: u64, unit: &str, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!("{{elapsed_precise}} [{{bar:30}}] {unit}{{pos}}/{{len}} {{msg}}");
    pb.set_style(ProgressStyle::with_template(&template).expect("a valid progress template").progress_chars("=> "));
    pb.set_message(what.to_string());
    pb
}

/// A spinner showing `msg` until it is finished.
pub fn spinner(msg: String) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_message(msg);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}
