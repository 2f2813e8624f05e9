//! From a task's importance to the priority band its work is published on.
//! Band 0 is served first.

use jetsched_contract::BANDS;

/// The band for `importance` (0-10): one band per importance point, 10 on
/// band 0 down to 1 on band 9; 0 shares band 9.
pub fn band_for(importance: u8) -> u8 {
    let top = BANDS - 1;
    top.saturating_sub(importance.min(10).saturating_sub(1)).min(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_important_work_gets_a_lower_band() {
        assert_eq!(band_for(10), 0);
        assert_eq!(band_for(5), 5);
        assert_eq!(band_for(1), 9);
        assert_eq!(band_for(0), 9);
        assert!((0..=10).all(|i| band_for(i) < BANDS));
    }
}
