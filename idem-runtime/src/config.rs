//! Settings of a service and options of one call.

use std::time::Duration;

use crate::error::ConfigError;

/// The longest duration a store keeps in its millisecond clock: about 100 years, which keeps
/// deadlines far from overflowing a `u64` of epoch milliseconds or Lua's doubles.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The shortest lease a service accepts. [`keep_alive`](crate::keep_alive) renews a lease
/// every third of its length, so the first renewal of a lease this short is sent a little
/// over 3 ms after the claim and has more than 6 ms to reach the store before the lease
/// ends. Shorter leases leave a renewal no time to land: the owner loses its key while it
/// works, and another caller runs the operation a second time.
pub const MIN_LOCK_TIMEOUT: Duration = Duration::from_millis(10);

/// The first re-check of a busy key happens this long after the claim attempt; a wait budget
/// shorter than this could never see a completion.
pub const FIRST_RECHECK: Duration = Duration::from_millis(2);

/// What the service does when the store itself fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Return [`Error::Store`](crate::Error::Store); the operation does not run. The default.
    #[default]
    FailClosed,
    /// Let the operation run unprotected, with a warning event for every bypass. Applies to
    /// store errors only, never to mismatches or timeouts.
    FailOpen,
}

/// What happens to a key when its operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Free the key at once: the next call runs the operation again. The default, right for
    /// errors that happen before any side effect.
    #[default]
    Release,
    /// Store the error for the failure TTL and replay it to every later call, right for
    /// errors that happen after a side effect or are deterministic.
    Record,
}

/// A service's settings, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Prefix of every store key. Default `idempotency:`.
    pub key_prefix: String,
    /// How long a completed record is kept, counted from completion. Default 24 h.
    pub ttl: Duration,
    /// How long a failed record is kept under [`FailurePolicy::Record`]. Default 24 h.
    pub failure_ttl: Duration,
    /// The lease: how long an owner holds a key without renewing it. At least
    /// [`MIN_LOCK_TIMEOUT`] (10 ms). Default 30 s.
    pub lock_timeout: Duration,
    /// How long a call waits for another owner before [`Error::WaitTimeout`]. Default 60 s.
    ///
    /// [`Error::WaitTimeout`]: crate::Error::WaitTimeout
    pub wait_timeout: Duration,
    /// Whether a key reused with other arguments is refused. Default on.
    pub validate_fingerprint: bool,
    /// What a store failure does. Default [`ErrorPolicy::FailClosed`].
    pub error_policy: ErrorPolicy,
    /// What an operation's failure does to its key. Default [`FailurePolicy::Release`].
    pub failure_policy: FailurePolicy,
    /// Longest key, in bytes. Default 255.
    pub max_key_len: usize,
    /// Largest response stored for replay, in bytes, counted as the body's bytes plus the
    /// bytes of every header name and value ([`Response::encoded_len`]). A response of
    /// exactly this size is stored; a larger one is recorded as not replayable. Default
    /// 1 MiB.
    ///
    /// [`Response::encoded_len`]: crate::Response::encoded_len
    pub max_response_bytes: usize,
    /// How many times a completion is tried when the store fails. Default 3.
    pub complete_attempts: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            key_prefix: "idempotency:".to_owned(),
            ttl: Duration::from_secs(24 * 3600),
            failure_ttl: Duration::from_secs(24 * 3600),
            lock_timeout: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(60),
            validate_fingerprint: true,
            error_policy: ErrorPolicy::FailClosed,
            failure_policy: FailurePolicy::Release,
            max_key_len: 255,
            max_response_bytes: 1024 * 1024,
            complete_attempts: 3,
        }
    }
}

impl Settings {
    /// Checks every setting; the builder calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration("ttl", self.ttl)?;
        check_duration("failure_ttl", self.failure_ttl)?;
        check_duration("lock_timeout", self.lock_timeout)?;
        check_lease(self.lock_timeout)?;
        check_duration("wait_timeout", self.wait_timeout)?;
        check_wait(self.wait_timeout)?;
        if self.max_key_len == 0 {
            return Err(ConfigError::ZeroLimit {
                setting: "max_key_len",
            });
        }
        if self.max_response_bytes == 0 {
            return Err(ConfigError::ZeroLimit {
                setting: "max_response_bytes",
            });
        }
        if self.complete_attempts == 0 {
            return Err(ConfigError::ZeroLimit {
                setting: "complete_attempts",
            });
        }
        check_prefix(&self.key_prefix)
    }
}

/// Options of one call; unset fields take the service's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Overrides [`Settings::ttl`].
    pub ttl: Option<Duration>,
    /// Overrides [`Settings::failure_ttl`].
    pub failure_ttl: Option<Duration>,
    /// Overrides [`Settings::lock_timeout`].
    pub lock_timeout: Option<Duration>,
    /// Overrides [`Settings::wait_timeout`].
    pub wait_timeout: Option<Duration>,
    /// `Some(false)`: answer [`CheckOutcome::InProgress`](crate::CheckOutcome::InProgress)
    /// at once instead of waiting for another owner. Default: wait.
    pub wait: Option<bool>,
    /// Overrides [`Settings::validate_fingerprint`].
    pub validate_fingerprint: Option<bool>,
    /// Overrides [`Settings::failure_policy`].
    pub failure_policy: Option<FailurePolicy>,
}

impl CallOptions {
    /// No overrides.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// Sets the result TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the failure TTL.
    pub fn failure_ttl(mut self, ttl: Duration) -> Self {
        self.failure_ttl = Some(ttl);
        self
    }

    /// Sets the lease; at least [`MIN_LOCK_TIMEOUT`].
    pub fn lock_timeout(mut self, lease: Duration) -> Self {
        self.lock_timeout = Some(lease);
        self
    }

    /// Sets the wait budget.
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait_timeout = Some(wait);
        self
    }

    /// Whether to wait for another owner.
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Whether to compare fingerprints.
    pub fn validate_fingerprint(mut self, validate: bool) -> Self {
        self.validate_fingerprint = Some(validate);
        self
    }

    /// What a failure does to the key.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = Some(policy);
        self
    }

    /// These options over `settings`, checked.
    pub(crate) fn resolve(&self, settings: &Settings) -> Result<Resolved, ConfigError> {
        let resolved = Resolved {
            ttl: self.ttl.unwrap_or(settings.ttl),
            failure_ttl: self.failure_ttl.unwrap_or(settings.failure_ttl),
            lock_timeout: self.lock_timeout.unwrap_or(settings.lock_timeout),
            wait_timeout: self.wait_timeout.unwrap_or(settings.wait_timeout),
            wait: self.wait.unwrap_or(true),
            validate_fingerprint: self
                .validate_fingerprint
                .unwrap_or(settings.validate_fingerprint),
            failure_policy: self.failure_policy.unwrap_or(settings.failure_policy),
        };
        check_duration("ttl", resolved.ttl)?;
        check_duration("failure_ttl", resolved.failure_ttl)?;
        check_duration("lock_timeout", resolved.lock_timeout)?;
        check_lease(resolved.lock_timeout)?;
        if resolved.wait {
            check_duration("wait_timeout", resolved.wait_timeout)?;
            check_wait(resolved.wait_timeout)?;
        }
        Ok(resolved)
    }
}

/// Call options with every setting filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub ttl: Duration,
    pub failure_ttl: Duration,
    pub lock_timeout: Duration,
    pub wait_timeout: Duration,
    pub wait: bool,
    pub validate_fingerprint: bool,
    pub failure_policy: FailurePolicy,
}

fn check_duration(setting: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::ZeroDuration { setting });
    }
    if value < Duration::from_millis(1) {
        return Err(ConfigError::SubMillisecond { setting, value });
    }
    if value > MAX_DURATION {
        return Err(ConfigError::DurationTooLarge {
            setting,
            value,
            max: MAX_DURATION,
        });
    }
    Ok(())
}

fn check_lease(lease: Duration) -> Result<(), ConfigError> {
    if lease < MIN_LOCK_TIMEOUT {
        return Err(ConfigError::LeaseTooShort {
            lease,
            min: MIN_LOCK_TIMEOUT,
        });
    }
    Ok(())
}

fn check_wait(wait: Duration) -> Result<(), ConfigError> {
    if wait < FIRST_RECHECK {
        return Err(ConfigError::WaitTooShort {
            wait,
            min: FIRST_RECHECK,
        });
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    let reason = if prefix.contains(['{', '}']) {
        "contains a brace, which would change the Redis Cluster hash tag"
    } else if prefix.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(ConfigError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let s = Settings::default();
        assert_eq!(s.key_prefix, "idempotency:");
        assert_eq!(s.ttl, Duration::from_secs(86_400));
        assert_eq!(s.lock_timeout, Duration::from_secs(30));
        assert_eq!(s.wait_timeout, Duration::from_secs(60));
        assert!(s.validate_fingerprint);
        assert_eq!(s.error_policy, ErrorPolicy::FailClosed);
        assert_eq!(s.failure_policy, FailurePolicy::Release);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn zero_durations_are_refused_by_name() {
        let s = Settings {
            lock_timeout: Duration::ZERO,
            ..Settings::default()
        };
        assert_eq!(
            s.validate(),
            Err(ConfigError::ZeroDuration {
                setting: "lock_timeout"
            })
        );
        let opts = CallOptions::new().ttl(Duration::ZERO);
        assert_eq!(
            opts.resolve(&Settings::default()),
            Err(ConfigError::ZeroDuration { setting: "ttl" })
        );
    }

    #[test]
    fn sub_millisecond_and_huge_durations_are_refused() {
        let opts = CallOptions::new().lock_timeout(Duration::from_micros(500));
        assert!(matches!(
            opts.resolve(&Settings::default()),
            Err(ConfigError::SubMillisecond { .. })
        ));
        let opts = CallOptions::new().ttl(MAX_DURATION + Duration::from_secs(1));
        assert!(matches!(
            opts.resolve(&Settings::default()),
            Err(ConfigError::DurationTooLarge { setting: "ttl", .. })
        ));
    }

    #[test]
    fn a_lease_too_short_to_renew_is_refused_and_the_minimum_is_accepted() {
        let just_under = MIN_LOCK_TIMEOUT - Duration::from_millis(1);
        let refused = ConfigError::LeaseTooShort {
            lease: just_under,
            min: Duration::from_millis(10),
        };
        let settings = |lock_timeout| Settings {
            lock_timeout,
            ..Settings::default()
        };
        assert_eq!(settings(just_under).validate(), Err(refused.clone()));
        assert_eq!(settings(MIN_LOCK_TIMEOUT).validate(), Ok(()));
        let options = |lease| CallOptions::new().lock_timeout(lease);
        assert_eq!(
            options(just_under).resolve(&Settings::default()),
            Err(refused)
        );
        let resolved = options(MIN_LOCK_TIMEOUT).resolve(&Settings::default());
        assert_eq!(resolved.map(|r| r.lock_timeout), Ok(MIN_LOCK_TIMEOUT));
    }

    #[test]
    fn a_wait_shorter_than_the_first_recheck_is_refused_unless_not_waiting() {
        let opts = CallOptions::new().wait_timeout(Duration::from_millis(1));
        assert!(matches!(
            opts.resolve(&Settings::default()),
            Err(ConfigError::WaitTooShort { .. })
        ));
        let opts = opts.wait(false);
        assert!(opts.resolve(&Settings::default()).is_ok());
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        let s = Settings {
            key_prefix: "a{b".into(),
            ..Settings::default()
        };
        assert!(matches!(
            s.validate(),
            Err(ConfigError::InvalidPrefix { .. })
        ));
    }
}
