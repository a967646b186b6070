//! `JoinClassic`, `SyncClassic`, `HeartbeatClassic`, `LeaveClassic`: Kafka's classic group
//! protocol (see [`crate::classic`]), for the gateways' Kafka listeners.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_proto::v1::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::classic::JoinSpec;
use crate::{Coordinator, validate_group_id};

/// Longest protocol name or type, member or instance id accepted.
const MAX_NAME: usize = 255;
/// Most protocols one member may offer.
const MAX_PROTOCOLS: usize = 16;

/// A waiting call ended without an answer: the group was dropped (the coordinator stopped
/// serving it). The member finds the coordinator again.
fn gone() -> SluiceError {
    SluiceError::CoordinatorNotAvailable("the coordinator stopped serving the group; find it again".into())
}

fn check_name(what: &str, s: &str) -> Result<(), SluiceError> {
    if s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(SluiceError::InvalidRequest(format!(
            "{what} must be at most {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

impl Coordinator {
    fn classic_spec(&self, r: ClassicJoinRequest) -> Result<JoinSpec, SluiceError> {
        validate_group_id(&r.group_id)?;
        for (what, s) in
            [("member id", &r.member_id), ("group instance id", &r.instance_id), ("protocol type", &r.protocol_type)]
        {
            check_name(what, s)?;
        }
        if r.protocol_type.is_empty() {
            return Err(SluiceError::InconsistentGroupProtocol {
                group: r.group_id,
                reason: "the join names no protocol type".into(),
            });
        }
        if r.protocols.is_empty() || r.protocols.len() > MAX_PROTOCOLS {
            return Err(SluiceError::InconsistentGroupProtocol {
                group: r.group_id,
                reason: format!("a member must offer 1 to {MAX_PROTOCOLS} protocols, not {}", r.protocols.len()),
            });
        }
        for p in &r.protocols {
            check_name("a protocol name", &p.name)?;
        }
        let s = &self.settings;
        let session = u64::from(r.session_timeout_ms);
        if !(s.min_session_timeout_ms..=s.max_session_timeout_ms).contains(&session) {
            return Err(SluiceError::InvalidRequest(format!(
                "session timeout {session} ms is outside the allowed {}..={} ms",
                s.min_session_timeout_ms, s.max_session_timeout_ms
            )));
        }
        let rebalance = if r.rebalance_timeout_ms == 0 { session } else { u64::from(r.rebalance_timeout_ms) };
        Ok(JoinSpec {
            member_id: r.member_id,
            instance_id: r.instance_id,
            client_id: r.client_id.chars().take(MAX_NAME).collect(),
            client_host: r.client_host,
            session_timeout: Duration::from_millis(session),
            rebalance_timeout: Duration::from_millis(rebalance.max(1)),
            protocol_type: r.protocol_type,
            protocols: r.protocols.into_iter().map(|p| (p.name, p.metadata)).collect(),
        })
    }

    pub(crate) async fn join_classic(
        self: &Arc<Self>,
        r: ClassicJoinRequest,
    ) -> Result<ClassicJoinResponse, SluiceError> {
        let group = r.group_id.clone();
        let spec = self.classic_spec(r)?;
        self.active()?;
        let delay = Duration::from_millis(self.settings.initial_rebalance_delay_ms);
        let (tx, rx) = oneshot::channel();
        self.groups.with_group(self, &group, |g| g.classic_join(spec, tx, delay, Instant::now()))??;
        let j = rx.await.map_err(|_| gone())??;
        Ok(ClassicJoinResponse {
            generation: j.generation,
            protocol_type: j.protocol_type,
            protocol: j.protocol,
            leader: j.leader,
            member_id: j.member_id,
            members: j
                .members
                .into_iter()
                .map(|(member_id, instance_id, metadata)| ClassicMember { member_id, instance_id, metadata })
                .collect(),
        })
    }

    pub(crate) async fn sync_classic(
        self: &Arc<Self>,
        r: ClassicSyncRequest,
    ) -> Result<ClassicSyncResponse, SluiceError> {
        validate_group_id(&r.group_id)?;
        self.active()?;
        let (tx, rx) = oneshot::channel();
        let assignments = r.assignments.into_iter().map(|a| (a.member_id, a.assignment)).collect();
        let (protocol_type, protocol) = self
            .groups
            .update(&r.group_id, |g| {
                let c = &g.classic;
                if (!r.protocol_type.is_empty() && r.protocol_type != c.protocol_type)
                    || (!r.protocol.is_empty() && r.protocol != c.protocol)
                {
                    return Err(SluiceError::InconsistentGroupProtocol {
                        group: g.id.clone(),
                        reason: format!(
                            "the group uses protocol '{}' of type '{}', the sync named '{}' of type '{}'",
                            c.protocol, c.protocol_type, r.protocol, r.protocol_type
                        ),
                    });
                }
                let current = g.generation;
                let named = (c.protocol_type.clone(), c.protocol.clone());
                g.classic.sync(
                    &g.id,
                    &r.member_id,
                    &r.instance_id,
                    r.generation,
                    current,
                    assignments,
                    tx,
                    Instant::now(),
                )?;
                Ok(named)
            })
            .ok_or_else(|| SluiceError::UnknownMember { group: r.group_id.clone(), member: r.member_id.clone() })??;
        let assignment = rx.await.map_err(|_| gone())??;
        Ok(ClassicSyncResponse { protocol_type, protocol, assignment })
    }

    pub(crate) fn heartbeat_classic(
        &self,
        r: ClassicHeartbeatRequest,
    ) -> Result<ClassicHeartbeatResponse, SluiceError> {
        validate_group_id(&r.group_id)?;
        self.active()?;
        self.groups
            .update(&r.group_id, |g| {
                let current = g.generation;
                g.classic.heartbeat(&g.id, &r.member_id, &r.instance_id, r.generation, current, Instant::now())
            })
            .ok_or_else(|| SluiceError::UnknownMember { group: r.group_id.clone(), member: r.member_id.clone() })??;
        Ok(ClassicHeartbeatResponse {})
    }

    pub(crate) fn leave_classic(self: &Arc<Self>, r: ClassicLeaveRequest) -> Result<ClassicLeaveResponse, SluiceError> {
        validate_group_id(&r.group_id)?;
        self.active()?;
        let results = self
            .groups
            .update(&r.group_id, |g| {
                let now = Instant::now();
                r.members
                    .iter()
                    .map(|m| {
                        let left = g.classic.leave(&g.id, &m.member_id, &m.instance_id, &mut g.generation, now);
                        ClassicLeaveResult {
                            member_id: m.member_id.clone(),
                            instance_id: m.instance_id.clone(),
                            error: left.err().map(|e| e.to_proto()),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| {
                r.members
                    .iter()
                    .map(|m| ClassicLeaveResult {
                        member_id: m.member_id.clone(),
                        instance_id: m.instance_id.clone(),
                        error: Some(
                            SluiceError::UnknownMember { group: r.group_id.clone(), member: m.member_id.clone() }
                                .to_proto(),
                        ),
                    })
                    .collect()
            });
        // The group may be left empty: dropped when it holds nothing else.
        if self.groups.drop_if_idle(&r.group_id) {
            crate::registry::Host::mark(self.as_ref(), &r.group_id);
        }
        Ok(ClassicLeaveResponse { results })
    }
}
