//! Fixtures for the end-to-end tests.
pub mod agent;
pub mod manager;
pub mod postgres;
