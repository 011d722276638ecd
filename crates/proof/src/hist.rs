//! A log-linear latency histogram (about 1% precision, fixed size), so a run
//! of millions of requests keeps its percentiles in a few kilobytes.

const SUB: u32 = 7; // 128 sub-buckets per power of two

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; (64 - SUB as usize + 1) << SUB], total: 0, max: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < (1 << SUB) {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB
    let m = (v >> (e - SUB)) & ((1 << SUB) - 1);
    (((e - SUB + 1) << SUB) as u64 + m) as usize
}

/// The upper bound of a bucket (a percentile is reported as at most this).
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < (1 << SUB) {
        return i;
    }
    let e = (i >> SUB) + SUB as u64 - 1;
    let m = i & ((1 << SUB) - 1);
    let low = (1u64 << e) | (m << (e - SUB as u64));
    low + (1u64 << (e - SUB as u64)) - 1
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(37).chain([u32::MAX as u64, u64::MAX / 2]) {
            let i = index(v);
            assert!(i >= last, "index not monotonic at {v}");
            last = i;
            let hi = value(i);
            assert!(hi >= v, "{v} above its bucket's bound {hi}");
            assert!(hi - v <= v / 64 + 1, "bucket of {v} too wide: {hi}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((495_000..=510_000).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.count(), 1000);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
