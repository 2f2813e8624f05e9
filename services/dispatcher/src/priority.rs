//! Effective priority and the band work is published on. Band 0 is served
//! first; workers age waiting work upwards (see the worker's fetch loop), so
//! lower bands are delayed, never starved.

use std::time::Duration;

use jetsched_contract::BANDS;

/// Weights of the priority formula.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    /// Weight of importance (0-10, scaled to 0-1).
    pub importance: f64,
    /// Weight of shortness: a task expected to take `reference` scores 0.5,
    /// instant work 1, very long work towards 0.
    pub duration: f64,
    /// The duration scoring one half.
    pub reference: Duration,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { importance: 0.8, duration: 0.2, reference: Duration::from_secs(60) }
    }
}

/// `w1 * importance/10 + w2 * shortness`, normalised to 0..=1.
pub fn effective_priority(importance: u8, expected: Option<Duration>, w: &Weights) -> f64 {
    let imp = f64::from(importance.min(10)) / 10.0;
    // Unknown duration counts as the reference: neither favoured nor penalised.
    let secs = expected.unwrap_or(w.reference).as_secs_f64();
    let short = 1.0 / (1.0 + secs / w.reference.as_secs_f64().max(0.001));
    let total = (w.importance + w.duration).max(f64::EPSILON);
    ((w.importance * imp + w.duration * short) / total).clamp(0.0, 1.0)
}

/// The band for a priority: the top tenth is band 0, the bottom tenth band 9.
pub fn band(priority: f64) -> u8 {
    let top = f64::from(BANDS - 1);
    ((1.0 - priority) * f64::from(BANDS)).floor().clamp(0.0, top) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_dominates_and_shorter_work_wins_ties() {
        let w = Weights::default();
        let urgent = band(effective_priority(10, Some(Duration::from_secs(1)), &w));
        let normal = band(effective_priority(5, None, &w));
        let background = band(effective_priority(0, Some(Duration::from_secs(3600)), &w));
        assert_eq!(urgent, 0);
        assert!(urgent < normal && normal < background, "{urgent} {normal} {background}");
        assert_eq!(background, 9);
        let quick = effective_priority(5, Some(Duration::from_secs(1)), &w);
        let slow = effective_priority(5, Some(Duration::from_secs(600)), &w);
        assert!(quick > slow);
    }

    #[test]
    fn weights_are_configurable() {
        let only_duration = Weights { importance: 0.0, duration: 1.0, ..Weights::default() };
        assert_eq!(
            effective_priority(0, Some(Duration::from_secs(1)), &only_duration),
            effective_priority(10, Some(Duration::from_secs(1)), &only_duration)
        );
        assert!((0..=10).all(|i| band(effective_priority(i, None, &Weights::default())) < BANDS));
    }
}
