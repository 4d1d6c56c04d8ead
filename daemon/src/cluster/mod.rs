//! Several `silo serve` nodes as one service, on engines operators already
//! run (`silo serve --registry postgres://...`):
//!
//! - [`pg`]: the shared PostgreSQL connection and its versioned schema;
//! - [`PgEventStore`](crate::event_store::PgEventStore): the Event queue
//!   all nodes share, claimed with leases;
//! - [`haproxy`]: the HAProxy configuration that routes each (function,
//!   tenant) to one node by consistent hashing (an affinity hint, never the
//!   isolation boundary: each node keeps one tenant per environment).

pub mod haproxy;
pub mod pg;
