//! This replica's request figures for `/metrics`: a latency histogram per
//! group of routes and check-ins by answer. Counters are atomics in memory:
//! each replica reports its own, as Prometheus expects of every scraped target
//! (sum them over replicas in queries); they start at zero with the process.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Routes are grouped (not labelled by path) so the series stay few whatever
/// ids the paths carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Checkin,
    Api,
    Ui,
    Other,
}

impl Group {
    const ALL: [Group; 4] = [Group::Checkin, Group::Api, Group::Ui, Group::Other];

    pub fn of(path: &str) -> Group {
        if path == "/api/v1/agent/checkin" {
            Group::Checkin
        } else if path.starts_with("/api/") {
            Group::Api
        } else if path.starts_with("/ui") {
            Group::Ui
        } else {
            Group::Other
        }
    }

    fn name(self) -> &'static str {
        match self {
            Group::Checkin => "checkin",
            Group::Api => "api",
            Group::Ui => "ui",
            Group::Other => "other",
        }
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Check-in answers: 200 (work or news), 304 (unchanged), refused (4xx), failed (5xx).
const CHECKIN_STATUSES: [&str; 4] = ["200", "304", "4xx", "5xx"];

#[derive(Default)]
pub struct Metrics {
    latency: [Histogram; 4],
    checkins: [AtomicU64; 4],
}

impl Metrics {
    pub fn observe(&self, group: Group, status: u16, took: Duration) {
        let h = &self.latency[Group::ALL.iter().position(|g| *g == group).unwrap_or(3)];
        let seconds = took.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&h.buckets) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        if group == Group::Checkin {
            let i = match status {
                200 => 0,
                304 => 1,
                400..=499 => 2,
                _ => 3,
            };
            self.checkins[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The figures in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP hotpatch_checkins_total Agent check-ins answered by this replica, by answer.\n");
        out.push_str("# TYPE hotpatch_checkins_total counter\n");
        for (status, n) in CHECKIN_STATUSES.iter().zip(&self.checkins) {
            let _ = writeln!(out, "hotpatch_checkins_total{{status=\"{status}\"}} {}", n.load(Ordering::Relaxed));
        }
        out.push_str("# HELP hotpatch_http_request_duration_seconds Time to answer a request (to its headers), by group of routes.\n");
        out.push_str("# TYPE hotpatch_http_request_duration_seconds histogram\n");
        for (group, h) in Group::ALL.iter().zip(&self.latency) {
            let g = group.name();
            for (bound, n) in BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "hotpatch_http_request_duration_seconds_bucket{{group=\"{g}\",le=\"{bound}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "hotpatch_http_request_duration_seconds_bucket{{group=\"{g}\",le=\"+Inf\"}} {count}");
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "hotpatch_http_request_duration_seconds_sum{{group=\"{g}\"}} {sum}");
            let _ = writeln!(out, "hotpatch_http_request_duration_seconds_count{{group=\"{g}\"}} {count}");
        }
    }
}

/// Times every request and counts check-ins.
pub async fn track(
    axum::extract::State(st): axum::extract::State<crate::AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let group = Group::of(req.uri().path());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    st.metrics.observe(group, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_checkins_counted_by_answer() {
        let m = Metrics::default();
        m.observe(Group::Checkin, 304, Duration::from_millis(3));
        m.observe(Group::Checkin, 200, Duration::from_millis(30));
        m.observe(Group::Ui, 200, Duration::from_secs(20));
        let mut text = String::new();
        m.render(&mut text);
        for line in [
            "hotpatch_checkins_total{status=\"304\"} 1",
            "hotpatch_checkins_total{status=\"200\"} 1",
            "hotpatch_checkins_total{status=\"5xx\"} 0",
            "hotpatch_http_request_duration_seconds_bucket{group=\"checkin\",le=\"0.005\"} 1",
            "hotpatch_http_request_duration_seconds_bucket{group=\"checkin\",le=\"0.05\"} 2",
            "hotpatch_http_request_duration_seconds_bucket{group=\"ui\",le=\"10\"} 0",
            "hotpatch_http_request_duration_seconds_bucket{group=\"ui\",le=\"+Inf\"} 1",
            "hotpatch_http_request_duration_seconds_count{group=\"checkin\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in:\n{text}");
        }
        assert_eq!(Group::of("/ui/machines/x"), Group::Ui);
        assert_eq!(Group::of("/metrics"), Group::Other);
    }
}
