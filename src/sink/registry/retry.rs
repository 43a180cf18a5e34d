//! When and how long to wait before trying a request again.
//!
//! Registries fail in passing all the time: a load balancer resets a connection, a node answers
//! 503 while it restarts, Docker Hub answers 429 with `Retry-After`. A push of many gigabytes
//! must ride over these; a request the registry refuses for cause (400, 403, 404) is not retried.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many times to try, and how long to wait between tries.
///
/// The defaults are for real registries. Tests shorten the delays through these fields; the
/// production code never sleeps less than the policy it was given says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request or per blob, the first included (at least 1).
    pub attempts: u32,
    /// The wait after the first failure; each further failure doubles it.
    pub first_delay: Duration,
    /// The longest wait between two attempts, backoff or `Retry-After` alike.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts, 1 s, 2 s, 4 s, 8 s apart (docker push also makes five), a server's
    /// `Retry-After` honoured up to a minute.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// How long to wait after `failures` failed attempts (1 = the first failed), given what the
    /// server asked for (`Retry-After`), if anything. A server's wish is honoured up to
    /// `max_delay`; it never makes us wait less than our own backoff.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        let backoff = self.first_delay.saturating_mul(1 << shift);
        backoff
            .max(retry_after.unwrap_or_default())
            .min(self.max_delay)
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.max(1)
    }
}

/// Statuses worth another try: the request timed out (408), too many requests (429), or the
/// server failed (5xx; 501 Not Implemented will not change its mind).
pub(crate) fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && status != 501
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3), relative to
/// `now`. A date in the past means "now". Anything else is ignored (`None`).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// The IMF-fixdate form every current server sends (`Sun, 06 Nov 1994 08:49:37 GMT`), as Unix
/// seconds. The obsolete RFC 850 and asctime forms are not accepted (a missed `Retry-After`
/// only means our own backoff applies).
fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let [weekday, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    if !weekday.ends_with(',') || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let day: u64 = day.parse().ok()?;
    let year: u64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| if p.len() == 2 { p.parse().ok() } else { None })
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else {
        return None;
    };
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = crate::timefmt::days_from_civil(year as i64, month as i64, day as i64) as u64;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None), Duration::from_secs(1));
        assert_eq!(p.delay(2, None), Duration::from_secs(2));
        assert_eq!(p.delay(4, None), Duration::from_secs(8));
        assert_eq!(p.delay(30, None), Duration::from_secs(60));
        // Retry-After lengthens the wait, never shortens it, and is capped.
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(p.delay(3, Some(Duration::ZERO)), Duration::from_secs(4));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 PST", now),
            None
        );
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 413, 416, 501] {
            assert!(!is_transient_status(s), "{s}");
        }
    }
}
