//! The streams: what each one reads, how its pages are shaped, and in which order they come.
//!
//! Every stream shares the same machinery (`collect`): windows over a time field, a
//! checkpoint of its own, de-duplication across the overlap, objects under its own prefix.
//! What differs is listed here.

use crate::sentry::pages::{Envelope, Shape};

/// The order a stream's endpoint returns items in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Newest first: a page whose last item is older than the window ends the read.
    NewestFirst,
    /// Oldest first by `timestamp` (Discover / Explore with `sort=timestamp`): the query's
    /// offset cap is met by moving the query's start forward.
    OldestFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/projects/{org}/{project}/events/`, one project at a time.
    Events,
    /// `/organizations/{org}/issues/`, on `lastSeen`.
    Issues,
    /// `/organizations/{org}/audit-logs/`, on the control host.
    AuditLogs,
    /// `/organizations/{org}/events/?dataset=...`.
    Explore(Dataset),
}

/// A Discover / Explore dataset and the fields collected from it (Sentry allows 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dataset {
    pub name: &'static str,
    pub fields: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDef {
    pub name: &'static str,
    pub kind: Kind,
    pub shape: Shape,
    pub order: Order,
    /// Read for the whole org at once (not per project): in a sharded deployment only shard
    /// `0/n` collects it.
    pub org_wide: bool,
    /// What the token needs, for the 403 message.
    pub permission: &'static str,
}

/// Fields of the `transactions` dataset (18).
pub const TRANSACTION_FIELDS: &[&str] = &[
    "id",
    "timestamp",
    "transaction",
    "transaction.op",
    "transaction.status",
    "transaction.duration",
    "http.method",
    "http.status_code",
    "project",
    "project.id",
    "environment",
    "release",
    "user.id",
    "user.email",
    "user.ip",
    "trace",
    "sdk.name",
    "platform",
];

/// Fields of the `spans` dataset (19).
pub const SPAN_FIELDS: &[&str] = &[
    "id",
    "timestamp",
    "span.op",
    "span.description",
    "span.duration",
    "span.status",
    "is_transaction",
    "transaction",
    "trace",
    "parent_span",
    "project",
    "project.id",
    "environment",
    "release",
    "user.id",
    "user.email",
    "user.ip",
    "sdk.name",
    "platform",
];

/// Fields of the `logs` dataset (14).
pub const LOG_FIELDS: &[&str] = &[
    "id",
    "timestamp",
    "message",
    "severity",
    "severity_number",
    "trace",
    "project",
    "project.id",
    "environment",
    "release",
    "sdk.name",
    "user.id",
    "user.email",
    "user.ip",
];

const EXPLORE_SHAPE: Shape = Shape {
    envelope: Envelope::Data,
    id_field: "id",
    time_field: "timestamp",
    key_includes_time: false,
    project_field: Some("project.id"),
};

const fn explore(name: &'static str, fields: &'static [&'static str]) -> StreamDef {
    StreamDef {
        name,
        kind: Kind::Explore(Dataset { name, fields }),
        shape: EXPLORE_SHAPE,
        order: Order::OldestFirst,
        org_wide: true,
        permission: "Organization Read (org:read)",
    }
}

/// Every stream, in the order a run collects them.
pub const STREAMS: &[StreamDef] = &[
    StreamDef {
        name: "events",
        kind: Kind::Events,
        shape: Shape {
            envelope: Envelope::Array,
            id_field: "eventID",
            time_field: "dateCreated",
            key_includes_time: false,
            project_field: None,
        },
        order: Order::NewestFirst,
        org_wide: false,
        permission: "Project Read, Issue & Event Read and Organization Read",
    },
    StreamDef {
        name: "issues",
        kind: Kind::Issues,
        shape: Shape {
            envelope: Envelope::Array,
            id_field: "id",
            time_field: "lastSeen",
            key_includes_time: true,
            project_field: None,
        },
        order: Order::NewestFirst,
        org_wide: true,
        permission: "Issue & Event Read (event:read)",
    },
    StreamDef {
        name: "audit_logs",
        kind: Kind::AuditLogs,
        shape: Shape {
            envelope: Envelope::Rows,
            id_field: "id",
            time_field: "dateCreated",
            key_includes_time: false,
            project_field: None,
        },
        order: Order::NewestFirst,
        org_wide: true,
        permission:
            "Organization Read & Write (org:write; Sentry requires it for audit logs), or remove audit_logs from streams",
    },
    explore("transactions", TRANSACTION_FIELDS),
    explore("spans", SPAN_FIELDS),
    explore("logs", LOG_FIELDS),
];

pub fn by_name(name: &str) -> Option<&'static StreamDef> {
    STREAMS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_stream_is_defined_and_within_sentrys_field_limit() {
        for name in crate::config::KNOWN_STREAMS {
            let def = by_name(name).unwrap_or_else(|| panic!("{name} has no definition"));
            if let Kind::Explore(d) = def.kind {
                assert!(d.fields.len() <= 20, "{name}: {} fields", d.fields.len());
                assert!(d.fields.contains(&def.shape.id_field), "{name}");
                assert!(d.fields.contains(&def.shape.time_field), "{name}");
                let mut sorted = d.fields.to_vec();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), d.fields.len(), "{name} repeats a field");
            }
        }
        assert_eq!(STREAMS.len(), crate::config::KNOWN_STREAMS.len());
    }
}
