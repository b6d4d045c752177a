//! The before-callbacks' path (`*.CallbackBefore*`, `Sns.CallbackPrev*`), entered once the
//! query is verified and its command is one Tencent waits on, unless they are published like
//! every other callback (`--before-callbacks publish`). Tencent reads the answer as a verdict on
//! the user's action, so every way out is OK: past this path's own bounds the event is dropped
//! and counted, never the action (see [`crate::before`] for the policies).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Body;

use super::admission::{self, Admission};
use super::{Answered, Attempt, Handler, Rejection, Seen};
use crate::before::forward::Relay;
use crate::before::metrics::BeforeMetrics;
use crate::before::{Background, BeforeConfig, BeforeOutcome, BeforePolicy};
use crate::core::deliver::Deliver;
use crate::core::record::header;
use crate::tencent::callback::VerifiedQuery;

pub(super) struct BeforePath<D> {
    /// `Allow`, `Skip` or `Forward` (never `Publish`: those take the after path).
    policy: BeforePolicy,
    /// Their own request and memory bounds (the same sizes as the others'), so a saturated
    /// bridge still answers them.
    admission: Admission,
    background: Background<D>,
    relay: Option<Relay>,
}

impl<D: Deliver> BeforePath<D> {
    /// `None` when before-callbacks are published like every other callback.
    pub(super) fn new(
        config: &BeforeConfig,
        limits: admission::Limits,
        delivery: Arc<D>,
        publish_timeout: Duration,
        metrics: BeforeMetrics,
    ) -> Option<BeforePath<D>> {
        (config.policy != BeforePolicy::Publish).then(|| BeforePath {
            policy: config.policy,
            admission: Admission::new(limits),
            background: Background::new(delivery, config.queue, publish_timeout, metrics),
            relay: config.forward.clone().map(Relay::new),
        })
    }

    /// Reads and validates the body as the after path does, then answers by the policy.
    pub(super) async fn answer<B>(
        &self,
        handler: &Handler<D>,
        request: Request<B>,
        query: VerifiedQuery,
        has_body: bool,
        client: IpAddr,
        now: Duration,
    ) -> Attempt
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let command = query.command_label();
        let sdkappid = Some(query.sdkappid());
        let dropped = Attempt::ended(
            command,
            sdkappid,
            Ok(Answered::Before(BeforeOutcome::Dropped)),
            has_body,
        );
        let Ok(mut admitted) = self.admission.admit() else {
            return dropped;
        };
        // Tencent's query, passed on as it came to the moderation service.
        let relayed_query = self
            .relay
            .as_ref()
            .map(|_| request.uri().query().unwrap_or("").to_owned());
        let callback = match handler
            .read_callback(
                request,
                query,
                (&self.admission, &mut admitted, client),
                now,
            )
            .await
        {
            Ok(callback) => callback,
            Err(Rejection::Overloaded(_)) => return dropped,
            Err(rejection) => return Attempt::unreadable(command, sdkappid, rejection, has_body),
        };
        let seen = Seen::of(&callback);
        let answered = match (&self.relay, relayed_query) {
            (Some(relay), Some(query)) => {
                let mut record = handler.records.build(callback);
                let (answer, verdict) = relay.relay(&query, record.body.clone()).await;
                record
                    .headers
                    .push((header::BEFORE_VERDICT, verdict.label().to_owned()));
                Answered::Forwarded(answer, verdict, self.background.offer(record))
            }
            _ if self.policy == BeforePolicy::Skip => Answered::Before(BeforeOutcome::Skipped),
            _ => Answered::Before(self.background.offer(handler.records.build(callback))),
        };
        drop(admitted);
        seen.answered(command, Ok(answered))
    }
}
