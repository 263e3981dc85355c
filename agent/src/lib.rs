//! The fleetlet agent library.
