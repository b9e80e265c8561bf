//! Task-log export over OTLP (PROTOCOL §8.3, `task_assignment.telemetry_collection`).
//!
//! One follower per execution reads the execution's transcript spool (the same bytes the
//! transcript is shipped from, never a second stream), cuts it into lines, redacts each one
//! with the execution's own redactor, and posts batches of OTLP/HTTP protobuf records to the
//! collector with a per-execution identity token. It is flushed and stopped before the
//! execution's terminal message is queued, within a bound.
//!
//! Pure pieces, each in its file: [`gates`] (whether to export), [`redaction`], [`lines`],
//! [`record`] (what a record holds, fail-closed size), [`otlp`] (protobuf encoding),
//! [`identity`] (the token's request, acceptance and refresh rule). The I/O: [`transport`]
//! (one exchange with the same-origin redirect rule) and [`exporter`] (the follower).

pub mod exporter;
pub mod gates;
pub mod identity;
pub mod lines;
pub mod otlp;
pub mod record;
pub mod redaction;
pub mod transport;
