//! The process-wide service that `#[idempotent]` fns use when they name none.
//!
//! An application installs its service once, at start-up, before the first idempotent
//! call:
//!
//! ```
//! use idem_runtime::{global, IdempotencyService};
//!
//! global::install(IdempotencyService::in_memory()).expect("installed once, at start-up");
//! assert!(global::install(IdempotencyService::in_memory()).is_err());
//! ```
//!
//! If a call needs the service before anything was installed, an in-memory service is
//! started in its place, with a one-time warning: it dedupes within this process only, so
//! retries that reach another instance of the application run the body again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::service::{Idempotency, IdempotencyService};

static SERVICE: OnceLock<Arc<dyn Idempotency>> = OnceLock::new();

/// Set when the default in-memory service took the place of an installed one.
static DEFAULT_IN_USE: AtomicBool = AtomicBool::new(false);

/// Why [`install`] refused a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A service was installed before.
    #[error("an idempotency service is already installed; install it once, at start-up")]
    AlreadyInstalled,
    /// An idempotent call ran before anything was installed and started the default
    /// in-memory service, which cannot be swapped out under running calls.
    #[error(
        "an idempotent call ran before a service was installed and started the default \
         in-memory one; install the service at start-up, before the first call"
    )]
    DefaultInUse,
}

/// Installs the process-wide service. Call it once, at start-up, before the first
/// idempotent call.
///
/// # Errors
///
/// [`InstallError::AlreadyInstalled`] when a service was installed before, and
/// [`InstallError::DefaultInUse`] when a call already started the default in-memory service.
pub fn install<S: Idempotency + 'static>(service: S) -> Result<(), InstallError> {
    install_shared(Arc::new(service))
}

/// Installs an already shared service; see [`install`].
///
/// # Errors
///
/// As [`install`].
pub fn install_shared(service: Arc<dyn Idempotency>) -> Result<(), InstallError> {
    SERVICE.set(service).map_err(|_| {
        if DEFAULT_IN_USE.load(Ordering::Acquire) {
            InstallError::DefaultInUse
        } else {
            InstallError::AlreadyInstalled
        }
    })
}

/// The process-wide service: the installed one, or else the default in-memory one.
pub fn service() -> Arc<dyn Idempotency> {
    Arc::clone(SERVICE.get_or_init(|| {
        DEFAULT_IN_USE.store(true, Ordering::Release);
        tracing::warn!(
            "no idempotency service installed; using an in-memory one, which dedupes within \
             this process only. Call idem::global::install(..) at start-up"
        );
        Arc::new(IdempotencyService::in_memory())
    }))
}

/// Whether a service was installed (or the default one started).
pub fn is_set() -> bool {
    SERVICE.get().is_some()
}
