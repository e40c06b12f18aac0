//! Latency samples and the summaries the report prints.

use std::time::Duration;

/// Per-call latencies of one operation in one run.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// An empty set with room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            samples: Vec::with_capacity(n),
        }
    }

    /// Records one call.
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    /// Number of calls recorded.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no call was recorded.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples as whole nanoseconds separated by spaces (see [`Latencies::from_line`]).
    pub fn to_line(&self) -> String {
        let nanos: Vec<String> = self
            .samples
            .iter()
            .map(|d| d.as_nanos().to_string())
            .collect();
        nanos.join(" ")
    }

    /// Reads back what [`Latencies::to_line`] wrote; `None` for anything else.
    pub fn from_line(line: &str) -> Option<Self> {
        let samples = line
            .split_whitespace()
            .map(|n| n.parse().ok().map(Duration::from_nanos))
            .collect::<Option<Vec<_>>>()?;
        Some(Latencies { samples })
    }

    /// Calls per second over the summed call time.
    pub fn ops_per_sec(&self) -> f64 {
        let total: Duration = self.samples.iter().sum();
        self.samples.len() as f64 / total.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) in microseconds, nearest rank.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e6
    }
}

/// The median of `values` (0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of `a / b` over paired samples (pairs with `b <= 0` are left out; 0 for
/// none). Pairs come from the same round, so a busy spell of the machine that slows a round
/// slows both sides of its ratio.
pub fn paired_ratio(pairs: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    let ratios: Vec<f64> = pairs
        .into_iter()
        .filter(|&(_, b)| b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    median(&ratios)
}

/// The median, lowest and highest of `values`, or `None` for none.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((median(values), min, max))
}

/// The lowest and highest `a / b` over paired samples (pairs with `b <= 0` left out), or
/// `None` for none: how far the rounds behind a [`paired_ratio`] spread.
pub fn paired_range(pairs: impl IntoIterator<Item = (f64, f64)>) -> Option<(f64, f64)> {
    pairs
        .into_iter()
        .filter(|&(_, b)| b > 0.0)
        .map(|(a, b)| a / b)
        .fold(None, |range, r| match range {
            None => Some((r, r)),
            Some((lo, hi)) => Some((f64::min(lo, r), f64::max(hi, r))),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut lat = Latencies::default();
        for us in 1..=100 {
            lat.push(Duration::from_micros(us));
        }

        assert_eq!(lat.quantile_us(0.5).round(), 50.0);
        assert_eq!(lat.quantile_us(0.99).round(), 99.0);
    }

    #[test]
    fn paired_ratio_is_the_median_of_per_round_ratios() {
        // Round 2 is slow for both sides; its ratio is still 1.
        let pairs = [(10.0, 10.0), (1.0, 1.0), (12.0, 6.0)];

        assert_eq!(paired_ratio(pairs), 1.0);
        assert_eq!(paired_ratio([(1.0, 0.0)]), 0.0);
    }

    #[test]
    fn spread_is_the_median_and_the_extremes() {
        assert_eq!(spread(&[3.0, 9.0, 1.0, 4.0]), Some((3.5, 1.0, 9.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn paired_range_spans_the_per_round_ratios() {
        let pairs = [(10.0, 10.0), (1.0, 2.0), (12.0, 6.0), (3.0, 0.0)];

        assert_eq!(paired_range(pairs), Some((0.5, 2.0)));
        assert_eq!(paired_range([(1.0, 0.0)]), None);
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
