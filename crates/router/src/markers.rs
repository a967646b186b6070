//! Transaction markers, as the transaction coordinator writes them: one partition at a time
//! to its current leader, tried again through leader changes until it is written.

use std::time::Duration;

use sluice_core::{RemoteError, SluiceError};
use sluice_proto::v1::WriteTxnMarkerRequest;

use crate::Router;

/// Pause between two tries while the partition has no reachable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long one try waits for the leader's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One marker to write.
#[derive(Debug, Clone)]
pub struct MarkerWrite {
    pub topic: String,
    pub partition: u32,
    pub producer_id: i64,
    /// The producer's epoch after the transaction.
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: u64,
    /// See `WriteTxnMarkerRequest.keeps_epoch`.
    pub keeps_epoch: bool,
}

/// Why a marker was not written.
#[derive(Debug)]
pub enum MarkerError {
    /// The topic (or partition) no longer exists: there is nothing left to end.
    Gone,
    /// Refused for good (a newer coordinator, a malformed request).
    Refused(RemoteError),
    /// `keep_trying` said stop.
    Stopped(String),
}

impl Router {
    /// Writes `m` on the partition's leader, trying again on retriable failures for as long
    /// as `keep_trying` holds.
    pub async fn write_txn_marker(&self, m: &MarkerWrite, keep_trying: impl Fn() -> bool) -> Result<i64, MarkerError> {
        loop {
            let last = match self.marker_once(m).await {
                Ok(offset) => return Ok(offset),
                Err(Err(gone)) => return Err(gone),
                Err(Ok(e)) if !e.retriable => return Err(MarkerError::Refused(e)),
                Err(Ok(e)) => e,
            };
            if !keep_trying() {
                return Err(MarkerError::Stopped(last.message));
            }
            tracing::debug!(topic = %m.topic, partition = m.partition, reason = %last.message, "marker not written yet; trying again");
            let mut view = self.view.clone();
            view.borrow_and_update();
            let _ = tokio::time::timeout(RETRY_PAUSE, view.changed()).await;
        }
    }

    /// One try: the offset, or a failure (retriable or not), or `Err(Err(Gone))`.
    async fn marker_once(&self, m: &MarkerWrite) -> Result<i64, Result<RemoteError, MarkerError>> {
        let view = self.snapshot();
        let Some(t) = view.topics.get(&m.topic) else { return Err(Err(MarkerError::Gone)) };
        if m.partition as usize >= t.partitions.len() {
            return Err(Err(MarkerError::Gone));
        }
        let remote = |e: SluiceError| Err(Ok(RemoteError::from(&e.to_proto())));
        let target = match self.target(&view, t, m.partition) {
            Ok(x) => x,
            Err(e) => return remote(e),
        };
        let req = WriteTxnMarkerRequest {
            partition: Some(target.pref),
            producer_id: m.producer_id,
            producer_epoch: m.producer_epoch as i32,
            commit: m.commit,
            coordinator_epoch: m.coordinator_epoch,
            keeps_epoch: m.keeps_epoch,
        };
        match tokio::time::timeout(CALL_TIMEOUT, target.conn.api().write_txn_marker(req)).await {
            Err(_) => {
                remote(SluiceError::Timeout(format!("no answer from node {} in {CALL_TIMEOUT:?}", target.conn.id)))
            }
            Ok(Err(s)) => remote(target.conn.unavailable(s.message())),
            Ok(Ok(r)) => match r.error {
                Some(e) => Err(Ok(RemoteError::from(&e))),
                None => Ok(r.offset),
            },
        }
    }
}
