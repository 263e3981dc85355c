//! The fleetlet manager library.
