//! Percentiles over latency samples.

use std::time::Duration;

#[derive(Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The p-th percentile (0-100), nearest rank.
    pub fn percentile(&mut self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

impl Samples {
    /// `p50 .. p99 .. max ..`.
    pub fn summary(&mut self) -> String {
        let (p50, p99, max) = (self.percentile(50.0), self.percentile(99.0), self.percentile(100.0));
        format!("p50 {} p99 {} max {}", ms(p50), ms(p99), ms(max))
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
