//! Debug archives (PROTOCOL §8.4): a bounded NDJSON snapshot of one execution's stdout and
//! stderr, built from its transcript spool and uploaded straight to a presigned target the
//! control plane names, then acknowledged on the socket.
//!
//! Pure pieces, each with its own file: the vocabulary (`reason`), the checks in the
//! protocol's order (`validate`), the answer (`ack`), the object's lines and the first/last
//! plan (`ndjson`), CRC-32C (`crc32c`), the POST framing (`multipart`), the cleanup grace
//! (`grace`), the request cache (`cache`). Around them: the capture directory (`files`), the
//! snapshot (`snapshot`), the HTTP upload (`upload`) and the service that owns the work
//! (`service`): off the socket's read loop, bounded, and silent for executions it does not own.

pub mod ack;
pub mod cache;
pub mod crc32c;
pub mod files;
pub mod grace;
pub mod multipart;
pub mod ndjson;
pub mod reason;
pub mod service;
pub mod snapshot;
pub mod upload;
pub mod validate;
