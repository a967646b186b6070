//! Consumer groups for Kafka clients: JoinGroup, SyncGroup, Heartbeat and LeaveGroup (the
//! classic protocol, run by the group coordinator's `JoinClassic`...), OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups and DeleteGroups, each forwarded to the active
//! coordinator as the gRPC groups proxy does.
//!
//! Groups of Sluice stream members are listed and described too: as "consumer" groups whose
//! member assignments are encoded in Kafka's consumer protocol, so that Kafka's tools show
//! who holds what.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use sluice_proto::v1;
use sluice_proto::v1::groups_client::GroupsClient;

use super::{Client, Kafka, call_coordinator, errors, kafka_error, name};

/// How long a short coordinator call may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a join's rebalance timeout, for the coordinator's own work.
const JOIN_SLACK: Duration = Duration::from_secs(5);

fn s(v: StrBytes) -> String {
    v.to_string()
}

fn opt(v: Option<StrBytes>) -> String {
    v.map(s).unwrap_or_default()
}

fn strb(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn some(v: &str) -> Option<StrBytes> {
    Some(strb(v))
}

/// A group error seen from an OffsetCommit: a simple commit to a group with members is, to
/// Kafka, one from an unknown member.
fn commit_error(code: i16) -> i16 {
    if code == errors::NON_EMPTY_GROUP { errors::UNKNOWN_MEMBER_ID } else { code }
}

pub(super) async fn join(k: &Kafka, r: JoinGroupRequest, client: &Client) -> JoinGroupResponse {
    let member_id = r.member_id.clone();
    let failed = |code: i16| {
        JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_protocol_type(None)
            .with_protocol_name(Some(StrBytes::new()))
            .with_member_id(member_id.clone())
    };
    let session = r.session_timeout_ms.max(0) as u32;
    // Version 0 has no rebalance timeout: the session timeout stands in, as in Kafka.
    let rebalance = if r.rebalance_timeout_ms > 0 { r.rebalance_timeout_ms as u32 } else { session };
    let req = v1::ClassicJoinRequest {
        group_id: s(r.group_id.0),
        member_id: s(r.member_id),
        instance_id: opt(r.group_instance_id),
        client_id: client.id.clone(),
        client_host: client.host.clone(),
        session_timeout_ms: session,
        rebalance_timeout_ms: rebalance,
        protocol_type: s(r.protocol_type),
        protocols: r
            .protocols
            .into_iter()
            .map(|p| v1::ClassicProtocol { name: s(p.name), metadata: p.metadata })
            .collect(),
    };
    let wait = Duration::from_millis(u64::from(rebalance.max(session))) + JOIN_SLACK;
    match call_coordinator(k, wait, req, |ch, req| async move { GroupsClient::new(ch).join_classic(req).await }).await {
        Ok(j) => JoinGroupResponse::default()
            .with_generation_id(j.generation as i32)
            .with_protocol_type(some(&j.protocol_type))
            .with_protocol_name(some(&j.protocol))
            .with_leader(strb(&j.leader))
            .with_member_id(strb(&j.member_id))
            .with_members(
                j.members
                    .into_iter()
                    .map(|m| {
                        JoinGroupResponseMember::default()
                            .with_member_id(strb(&m.member_id))
                            .with_group_instance_id((!m.instance_id.is_empty()).then(|| strb(&m.instance_id)))
                            .with_metadata(m.metadata)
                    })
                    .collect(),
            ),
        Err(code) => failed(code),
    }
}

pub(super) async fn sync(k: &Kafka, r: SyncGroupRequest) -> SyncGroupResponse {
    let req = v1::ClassicSyncRequest {
        group_id: s(r.group_id.0),
        member_id: s(r.member_id),
        instance_id: opt(r.group_instance_id),
        generation: r.generation_id.max(0) as u64,
        protocol_type: opt(r.protocol_type),
        protocol: opt(r.protocol_name),
        assignments: r
            .assignments
            .into_iter()
            .map(|a| v1::ClassicAssignment { member_id: s(a.member_id), assignment: a.assignment })
            .collect(),
    };
    if r.generation_id < 0 {
        return SyncGroupResponse::default().with_error_code(errors::ILLEGAL_GENERATION);
    }
    // The follower's wait for its leader is bounded by the leader's session: the coordinator
    // answers (rebalance) when the leader is removed.
    let wait = Duration::from_secs(300) + JOIN_SLACK;
    match call_coordinator(k, wait, req, |ch, req| async move { GroupsClient::new(ch).sync_classic(req).await }).await {
        Ok(a) => SyncGroupResponse::default()
            .with_protocol_type(some(&a.protocol_type))
            .with_protocol_name(some(&a.protocol))
            .with_assignment(a.assignment),
        Err(code) => SyncGroupResponse::default().with_error_code(code),
    }
}

pub(super) async fn heartbeat(k: &Kafka, r: HeartbeatRequest) -> HeartbeatResponse {
    if r.generation_id < 0 {
        return HeartbeatResponse::default().with_error_code(errors::ILLEGAL_GENERATION);
    }
    let req = v1::ClassicHeartbeatRequest {
        group_id: s(r.group_id.0),
        member_id: s(r.member_id),
        instance_id: opt(r.group_instance_id),
        generation: r.generation_id as u64,
    };
    match call_coordinator(k, TIMEOUT, req, |ch, req| async move { GroupsClient::new(ch).heartbeat_classic(req).await })
        .await
    {
        Ok(_) => HeartbeatResponse::default(),
        Err(code) => HeartbeatResponse::default().with_error_code(code),
    }
}

pub(super) async fn leave(k: &Kafka, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    // Versions up to 2 name one member; 3 and later a batch.
    let members: Vec<v1::ClassicLeaver> = if version < 3 {
        vec![v1::ClassicLeaver { member_id: s(r.member_id), instance_id: String::new() }]
    } else {
        r.members
            .into_iter()
            .map(|m| v1::ClassicLeaver { member_id: s(m.member_id), instance_id: opt(m.group_instance_id) })
            .collect()
    };
    let req = v1::ClassicLeaveRequest { group_id: s(r.group_id.0), members };
    match call_coordinator(k, TIMEOUT, req, |ch, req| async move { GroupsClient::new(ch).leave_classic(req).await })
        .await
    {
        Ok(resp) if version < 3 => {
            let code = resp.results.first().and_then(|r| r.error.as_ref()).map_or(errors::NONE, code_of);
            LeaveGroupResponse::default().with_error_code(code)
        }
        Ok(resp) => LeaveGroupResponse::default().with_members(
            resp.results
                .into_iter()
                .map(|m| {
                    MemberResponse::default()
                        .with_member_id(strb(&m.member_id))
                        .with_group_instance_id((!m.instance_id.is_empty()).then(|| strb(&m.instance_id)))
                        .with_error_code(m.error.as_ref().map_or(errors::NONE, code_of))
                })
                .collect(),
        ),
        Err(code) => LeaveGroupResponse::default().with_error_code(code),
    }
}

fn code_of(e: &v1::Error) -> i16 {
    kafka_error(e.sluice_code)
}

/// One offset of a commit request (OffsetCommit or TxnOffsetCommit) as the coordinator takes it.
pub(super) fn committed(topic: &str, partition: i32, offset: i64, metadata: Option<&StrBytes>) -> v1::CommittedOffset {
    v1::CommittedOffset {
        topic: topic.to_string(),
        partition: partition as u32,
        offset,
        metadata: metadata.map(|m| m.to_string()).unwrap_or_default(),
        commit_time_ms: 0,
    }
}

/// The error code of each partition of a commit request, in request order (`indexes`): the
/// coordinator's per-partition answer (it was sent the partitions with an index of 0 or
/// more, in order), or the whole call's error; `map` adapts codes to the API.
pub(super) fn commit_codes(
    indexes: impl Iterator<Item = i32>,
    answer: &Result<Vec<v1::PartitionCommitResult>, i16>,
    map: impl Fn(i16) -> i16,
) -> Vec<i16> {
    let mut results = answer.as_ref().map(|r| r.iter()).unwrap_or_default();
    indexes
        .map(|i| match answer {
            _ if i < 0 => errors::UNKNOWN_TOPIC_OR_PARTITION,
            Err(code) => map(*code),
            Ok(_) => results.next().and_then(|r| r.error.as_ref()).map_or(errors::NONE, |e| map(code_of(e))),
        })
        .collect()
}

pub(super) async fn commit(k: &Kafka, r: OffsetCommitRequest) -> OffsetCommitResponse {
    let member_id = s(r.member_id);
    let generation = if member_id.is_empty() { 0 } else { r.generation_id_or_member_epoch.max(0) as u64 };
    let offsets = r
        .topics
        .iter()
        .flat_map(|t| {
            let valid = t.partitions.iter().filter(|p| p.partition_index >= 0);
            valid.map(|p| committed(&t.name.0, p.partition_index, p.committed_offset, p.committed_metadata.as_ref()))
        })
        .collect();
    let req = v1::CommitOffsetsRequest { id: 0, group_id: s(r.group_id.0), member_id, generation, offsets };
    let answer =
        call_coordinator(k, TIMEOUT, req, |ch, req| async move { GroupsClient::new(ch).commit_offsets(req).await })
            .await
            .map(|resp| resp.results);
    let indexes = r.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.partition_index));
    let mut codes = commit_codes(indexes, &answer, commit_error).into_iter();
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(codes.next().unwrap_or(errors::UNKNOWN_SERVER_ERROR))
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// A topic's committed offsets: `(topic, [(partition, offset, metadata)])`.
type TopicOffsets = (String, Vec<(i32, i64, String)>);

/// One group's committed offsets for the topics asked (`None`: every committed one), or the
/// group's error.
async fn fetch_group(
    k: &Kafka,
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Vec<TopicOffsets>, i16> {
    let call = |topic: String, partitions: Vec<u32>| {
        let req = v1::FetchOffsetsRequest { group_id: group.clone(), topic, require_stable, partitions };
        call_coordinator(k, TIMEOUT, req, |ch, req| async move { GroupsClient::new(ch).fetch_offsets(req).await })
    };
    match topics {
        None => {
            let all = call(String::new(), vec![]).await?;
            let mut by_topic: Vec<TopicOffsets> = Vec::new();
            for o in all.offsets {
                match by_topic.last_mut().filter(|(t, _)| *t == o.topic) {
                    Some((_, ps)) => ps.push((o.partition as i32, o.offset, o.metadata)),
                    None => by_topic.push((o.topic, vec![(o.partition as i32, o.offset, o.metadata)])),
                }
            }
            Ok(by_topic)
        }
        Some(topics) => {
            let mut out = Vec::with_capacity(topics.len());
            for (topic, partitions) in topics {
                let wanted: Vec<u32> = partitions.iter().filter(|p| **p >= 0).map(|p| *p as u32).collect();
                let got = call(topic.clone(), wanted).await?;
                let ps = partitions
                    .into_iter()
                    .map(|p| match got.offsets.iter().find(|o| o.partition as i32 == p) {
                        Some(o) => (p, o.offset, o.metadata.clone()),
                        None => (p, -1, String::new()),
                    })
                    .collect();
                out.push((topic, ps));
            }
            Ok(out)
        }
    }
}

pub(super) async fn fetch(k: &Kafka, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version < 8 {
        let topics = r.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
        return match fetch_group(k, s(r.group_id.0), topics, r.require_stable).await {
            Ok(found) => OffsetFetchResponse::default().with_topics(
                found
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchResponseTopic::default().with_name(name(&t)).with_partitions(
                            ps.into_iter()
                                .map(|(p, offset, meta)| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(-1)
                                        .with_metadata(some(&meta))
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            // Up to version 1 the error travels per partition only; none are named here.
            Err(code) => OffsetFetchResponse::default().with_error_code(code),
        };
    }
    let mut groups = Vec::with_capacity(r.groups.len());
    for g in r.groups {
        let group_id = g.group_id.clone();
        let topics = g.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
        let answer = match fetch_group(k, s(g.group_id.0), topics, r.require_stable).await {
            Ok(found) => OffsetFetchResponseGroup::default().with_topics(
                found
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchResponseTopics::default().with_name(name(&t)).with_partitions(
                            ps.into_iter()
                                .map(|(p, offset, meta)| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(-1)
                                        .with_metadata(some(&meta))
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            Err(code) => OffsetFetchResponseGroup::default().with_error_code(code),
        };
        groups.push(answer.with_group_id(group_id));
    }
    OffsetFetchResponse::default().with_groups(groups)
}

/// Kafka's group type: "classic" for groups of Kafka classic members, "consumer" for Sluice
/// stream members (server-side assignment, as KIP-848 consumer groups).
fn group_type(protocol_type: &str) -> &'static str {
    if protocol_type.is_empty() { "consumer" } else { "classic" }
}

pub(super) async fn list(k: &Kafka, r: ListGroupsRequest) -> ListGroupsResponse {
    let req = v1::ListGroupsRequest {};
    match call_coordinator(k, TIMEOUT, req, |ch, req| async move { GroupsClient::new(ch).list_groups(req).await }).await
    {
        Ok(resp) => {
            let states: Vec<String> = r.states_filter.iter().map(|s| s.to_lowercase()).collect();
            let types: Vec<String> = r.types_filter.iter().map(|s| s.to_lowercase()).collect();
            let groups = resp
                .groups
                .into_iter()
                .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
                .filter(|g| types.is_empty() || types.iter().any(|t| t == group_type(&g.protocol_type)))
                .map(|g| {
                    ListedGroup::default()
                        .with_group_id(GroupId(strb(&g.group_id)))
                        .with_protocol_type(strb(if g.protocol_type.is_empty() {
                            "consumer"
                        } else {
                            &g.protocol_type
                        }))
                        .with_group_state(strb(&g.state))
                        .with_group_type(strb(group_type(&g.protocol_type)))
                })
                .collect();
            ListGroupsResponse::default().with_groups(groups)
        }
        Err(code) => ListGroupsResponse::default().with_error_code(code),
    }
}

/// A Sluice member's partitions in Kafka's consumer protocol (ConsumerProtocolAssignment v0).
fn consumer_assignment(held: &[v1::TopicPartitions]) -> Bytes {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        held.iter()
            .map(|t| {
                TopicPartition::default()
                    .with_topic(name(&t.topic))
                    .with_partitions(t.partitions.iter().map(|p| *p as i32).collect())
            })
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    match a.encode(&mut buf, 0) {
        Ok(()) => buf.freeze(),
        Err(_) => Bytes::new(),
    }
}

pub(super) async fn describe(k: &Kafka, r: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(r.groups.len());
    for id in r.groups {
        let req = v1::DescribeGroupRequest { group_id: id.0.to_string() };
        let answer =
            call_coordinator(k, TIMEOUT, req, |ch, req| async move { GroupsClient::new(ch).describe_group(req).await });
        let described = match answer.await {
            Ok(g) => {
                let classic = !g.protocol_type.is_empty();
                let members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        let assignment = if classic { m.assignment } else { consumer_assignment(&m.assigned) };
                        DescribedGroupMember::default()
                            .with_member_id(strb(&m.member_id))
                            .with_group_instance_id((!m.instance_id.is_empty()).then(|| strb(&m.instance_id)))
                            .with_client_id(strb(&m.client_id))
                            .with_client_host(strb(&m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(assignment)
                    })
                    .collect();
                DescribedGroup::default()
                    .with_group_state(strb(&g.state))
                    .with_protocol_type(strb(if classic { &g.protocol_type } else { "consumer" }))
                    .with_protocol_data(strb(&g.assignor))
                    .with_members(members)
            }
            // Kafka describes an unknown group as Dead; version 6 also says it is not found.
            Err(code) if code == errors::GROUP_ID_NOT_FOUND => {
                let described = DescribedGroup::default().with_group_state(strb("Dead"));
                if version >= 6 { described.with_error_code(code) } else { described }
            }
            Err(code) => DescribedGroup::default().with_error_code(code),
        };
        groups.push(described.with_group_id(id).with_authorized_operations(i32::MIN));
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(super) async fn delete(k: &Kafka, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(r.groups_names.len());
    for id in r.groups_names {
        let req = v1::DeleteGroupRequest { group_id: id.0.to_string() };
        let code =
            match call_coordinator(
                k,
                TIMEOUT,
                req,
                |ch, req| async move { GroupsClient::new(ch).delete_group(req).await },
            )
            .await
            {
                Ok(_) => errors::NONE,
                Err(code) => code,
            };
        results.push(DeletableGroupResult::default().with_group_id(id).with_error_code(code));
    }
    DeleteGroupsResponse::default().with_results(results)
}
