//! Tenant scheduler.
