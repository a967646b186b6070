//! `Membership`: one bidirectional stream per member. The first message is a JoinGroup;
//! heartbeats, assignment acknowledgements and commits follow on the same stream, and the
//! coordinator sends Joined, assignments and commit answers back.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_core::topic::flatten_topics;
use sluice_proto::v1::member_event::Kind as EventKind;
use sluice_proto::v1::member_request::Kind as RequestKind;
use sluice_proto::v1::*;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::EventStream;
use crate::assignor::Assignor;
use crate::group::{Conn, EVENTS_QUEUED, JoinSpec};
use crate::{Coordinator, validate_group_id};

/// How long a new stream may take to send its JoinGroup.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// Reads the JoinGroup and serves the stream.
pub(super) async fn handle(c: &Arc<Coordinator>, mut input: Streaming<MemberRequest>) -> Result<EventStream, Status> {
    let first = tokio::time::timeout(JOIN_WAIT, input.message())
        .await
        .map_err(|_| SluiceError::Timeout("no JoinGroup within 10 s of opening the stream".into()))??;
    let Some(MemberRequest { kind: Some(RequestKind::Join(join)) }) = first else {
        return Err(
            SluiceError::InvalidRequest("the first message of a membership stream must be a JoinGroup".into()).into()
        );
    };
    Ok(c.attach(join, input)?)
}

impl Coordinator {
    fn join_spec(&self, j: JoinGroup) -> Result<JoinSpec, SluiceError> {
        validate_group_id(&j.group_id)?;
        if j.topics.is_empty() {
            return Err(SluiceError::InvalidRequest("a member must subscribe to at least one topic".into()));
        }
        for t in &j.topics {
            sluice_core::topic::validate_topic_name(t)?;
        }
        let assignor = Assignor::parse(&j.assignor).ok_or_else(|| {
            SluiceError::InvalidRequest(format!("unknown assignor '{}': use one of {}", j.assignor, Assignor::NAMES))
        })?;
        let s = &self.settings;
        let session = if j.session_timeout_ms == 0 { s.session_timeout_ms } else { j.session_timeout_ms as u64 };
        if !(s.min_session_timeout_ms..=s.max_session_timeout_ms).contains(&session) {
            return Err(SluiceError::InvalidRequest(format!(
                "session timeout {session} ms is outside the allowed {}..={} ms",
                s.min_session_timeout_ms, s.max_session_timeout_ms
            )));
        }
        let rebalance =
            if j.rebalance_timeout_ms == 0 { s.rebalance_timeout_ms } else { j.rebalance_timeout_ms as u64 };
        let owned = flatten_topics(&j.owned);
        Ok(JoinSpec {
            member_id: j.member_id,
            instance_id: j.instance_id,
            client_id: j.client_id,
            topics: j.topics.into_iter().collect(),
            assignor,
            session_timeout: Duration::from_millis(session),
            rebalance_timeout: Duration::from_millis(rebalance.max(1)),
            owned,
        })
    }

    /// Serves one membership stream after its JoinGroup.
    pub(crate) fn attach(
        self: &Arc<Self>,
        join: JoinGroup,
        mut input: Streaming<MemberRequest>,
    ) -> Result<EventStream, SluiceError> {
        let group_id = join.group_id.clone();
        let spec = self.join_spec(join)?;
        self.active()?;
        let (tx, rx) = mpsc::channel(EVENTS_QUEUED);
        let kick = Arc::new(Notify::new());
        let conn_id = self.conn_id();
        let conn = Conn::new(conn_id, tx.clone(), kick.clone());
        let joined = Joined {
            member_id: String::new(),
            heartbeat_interval_ms: (spec.session_timeout.as_millis() / 3).max(100) as u32,
            session_timeout_ms: spec.session_timeout.as_millis() as u32,
            assignor: spec.assignor.name().to_string(),
        };
        let member_id = self.groups.with_group(self, &group_id, |g| {
            let id = g.join(spec, conn, Instant::now())?;
            // Joined goes out before the first assignment, which the reconcile sends; the
            // queue is new, so there is room.
            let joined = Joined { member_id: id.clone(), ..joined };
            let _ = tx.try_send(Ok(MemberEvent { kind: Some(EventKind::Joined(joined)) }));
            Ok::<_, SluiceError>(id)
        })??;
        tracing::info!(group = %group_id, member = %member_id, "member joined");
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = kick.notified() => {
                        // Removed or replaced (nothing to do: the group no longer knows this
                        // stream), or not reading its events: kept as after a broken stream.
                        me.groups.update(&group_id, |g| g.disconnected(&member_id, conn_id, false));
                        break;
                    }
                    m = input.message() => m,
                };
                let kind = match msg {
                    Ok(Some(MemberRequest { kind: Some(k) })) => k,
                    Ok(Some(MemberRequest { kind: None })) => continue,
                    // The gateway ends the stream cleanly when the member left or died.
                    Ok(None) => {
                        if me
                            .groups
                            .with_group(&me, &group_id, |g| g.disconnected(&member_id, conn_id, true))
                            .unwrap_or(false)
                        {
                            tracing::info!(group = %group_id, member = %member_id, "member stream closed");
                        }
                        break;
                    }
                    // The connection to its gateway broke: the member may be alive and back
                    // through another gateway within its session timeout.
                    Err(e) => {
                        if me
                            .groups
                            .with_group(&me, &group_id, |g| g.disconnected(&member_id, conn_id, false))
                            .unwrap_or(false)
                        {
                            tracing::info!(group = %group_id, member = %member_id, error = %e, "member connection lost; kept for its session timeout");
                        }
                        break;
                    }
                };
                if me.groups.update(&group_id, |g| g.touch(&member_id, conn_id, Instant::now())).is_none() {
                    break;
                }
                match kind {
                    RequestKind::Heartbeat(_) => {}
                    RequestKind::Ack(a) => {
                        let _ = me.groups.with_group(&me, &group_id, |g| g.ack(&member_id, a.generation));
                    }
                    RequestKind::Commit(mut c) => {
                        c.group_id = group_id.clone();
                        let id = c.id;
                        // On the stream a failed request is an answer, not the stream's end.
                        let r = me.commit(Some(&member_id), c).await.unwrap_or_else(|e| CommitOffsetsResponse {
                            id,
                            results: vec![],
                            error: Some(e.to_proto()),
                        });
                        // Answers wait for room: a member that commits reads its answers.
                        if tx.send(Ok(MemberEvent { kind: Some(EventKind::Commit(r)) })).await.is_err() {
                            break;
                        }
                    }
                    RequestKind::Join(_) => {
                        let again = SluiceError::InvalidRequest(
                            "this stream has already joined; open a new stream to join again".into(),
                        );
                        let _ = tx.send(Err(again.into())).await;
                        break;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
