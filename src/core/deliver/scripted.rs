//! A [`Deliver`] whose outcomes a test scripts, for in-process tests of the handler: every
//! outcome's status, ErrorCode, `Retry-After` and metric, without a broker. Compiled for unit
//! tests and with the `test-util` feature (the integration tests turn it on); never in a release
//! build.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{Ack, Deliver, DeliveryError};
use crate::core::Record;

/// One scripted answer to a delivery.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok,
    Duplicate,
    Fail(DeliveryError),
    /// Waits this long, then answers with the inner outcome.
    After(Duration, Box<Outcome>),
}

/// Answers deliveries from a script (then with the default outcome) and keeps every record it
/// answered `Ok` or `Duplicate`, in order.
pub struct Scripted {
    script: Mutex<VecDeque<Outcome>>,
    default: Outcome,
    delivered: Mutex<Vec<Record>>,
    ready: AtomicBool,
    /// Keys whose records are always refused with this error (a broker refusing one group).
    refused_keys: Mutex<Vec<(String, DeliveryError)>>,
}

impl Scripted {
    /// Every delivery answers `default` unless scripted otherwise.
    pub fn new(default: Outcome) -> Scripted {
        Scripted {
            script: Mutex::new(VecDeque::new()),
            default,
            delivered: Mutex::new(Vec::new()),
            ready: AtomicBool::new(true),
            refused_keys: Mutex::new(Vec::new()),
        }
    }

    /// The next deliveries answer these outcomes, in order.
    pub fn then(&self, outcomes: impl IntoIterator<Item = Outcome>) -> &Self {
        lock(&self.script).extend(outcomes);
        self
    }

    /// Every record of `key` is refused with `err` from now on (before any script).
    pub fn refuse_key(&self, key: &str, err: DeliveryError) {
        lock(&self.refused_keys).push((key.to_owned(), err));
    }

    /// No key is refused any more.
    pub fn clear_refusals(&self) {
        lock(&self.refused_keys).clear();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The records taken so far (answered `Ok` or `Duplicate`).
    pub fn delivered(&self) -> Vec<Record> {
        lock(&self.delivered).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Deliver for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn deliver(&self, record: &Record) -> Result<Ack, DeliveryError> {
        let refused = lock(&self.refused_keys)
            .iter()
            .find(|(key, _)| *key == record.key)
            .map(|(_, err)| err.clone());
        if let Some(err) = refused {
            return Err(err);
        }
        let mut outcome = lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| self.default.clone());
        loop {
            match outcome {
                Outcome::After(delay, then) => {
                    tokio::time::sleep(delay).await;
                    outcome = *then;
                }
                Outcome::Ok | Outcome::Duplicate => {
                    lock(&self.delivered).push(record.clone());
                    return Ok(Ack {
                        duplicate: matches!(outcome, Outcome::Duplicate),
                        stored_at: None,
                    });
                }
                Outcome::Fail(err) => return Err(err),
            }
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn close(&self, _timeout: Duration) {}
}
