//! The run as a time series: requests and latency per 100 ms, and a mark for
//! every switch (one apply or rollback across all the server's processes),
//! on one clock from the start of the run, for the report and its plots.

use crate::client::Sample;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub const BIN: Duration = Duration::from_millis(100);

/// One 100 ms interval, by when its requests were sent.
#[derive(Serialize, Clone)]
pub struct Bin {
    /// Start of the interval, seconds from the start of the run.
    pub t_s: f64,
    pub requests: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// One switch: the `hotpatch` commands of every process of the server.
#[derive(Serialize, Clone)]
pub struct Mark {
    pub start_s: f64,
    pub end_s: f64,
    /// "apply" or "rollback".
    pub kind: &'static str,
    pub generation: u32,
    pub processes: usize,
    pub ok: bool,
    /// The longest pause among its processes.
    pub pause_max_us: u64,
    /// The fault injected around it, if any.
    pub fault: Option<&'static str>,
}

/// `samples` (sent times relative to their generation's origin) put into
/// bins on the run's clock, `offset` being the generation's origin on it.
pub fn bins<'a>(samples: impl Iterator<Item = &'a Sample>, offset: Duration) -> Vec<Bin> {
    let bin_us = BIN.as_micros() as u64;
    let offset_us = offset.as_micros() as u64;
    let mut by_bin: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in samples {
        by_bin.entry((offset_us + s.sent_us) / bin_us).or_default().push(s.latency_ns);
    }
    by_bin
        .into_iter()
        .map(|(i, mut lat)| {
            lat.sort_unstable();
            let q = |q: f64| {
                let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
                micros(lat[rank - 1])
            };
            Bin {
                t_s: (i * bin_us) as f64 / 1e6,
                requests: lat.len() as u64,
                p50_us: q(0.5),
                p99_us: q(0.99),
                max_us: micros(lat[lat.len() - 1]),
            }
        })
        .collect()
}

fn micros(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_us: u64, latency_us: u64) -> Sample {
        Sample { sent_us, latency_ns: latency_us * 1000, crafted: false }
    }

    #[test]
    fn samples_fall_into_100_ms_bins_on_the_runs_clock() {
        let s: Vec<Sample> = (0..100).map(|i| sample(i * 1000, i + 1)).chain([sample(150_000, 7)]).collect();
        let b = bins(s.iter(), Duration::from_secs(2));
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].t_s, b[0].requests, b[0].p50_us, b[0].p99_us, b[0].max_us), (2.0, 100, 50.0, 99.0, 100.0));
        assert_eq!((b[1].t_s, b[1].requests, b[1].p99_us), (2.1, 1, 7.0));
    }

    #[test]
    fn no_samples_no_bins() {
        assert!(bins([].iter(), Duration::ZERO).is_empty());
    }
}
