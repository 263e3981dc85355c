//! Fleet rollouts (docs/fleets.md, "Manager"): a pure state machine (`state.rs`, `step.rs`)
//! that moves a fleet's revision through its devices batch by batch, and the controller that runs
//! it on every replica under a PostgreSQL lease per fleet.
//!
//! Invariant: the state machine decides, the controller only reads rows and applies the step's
//! outcome; every write of a device's manifest is conditional on its row, so no device is
//! written twice for one revision whichever replica runs the step.

pub mod controller;
pub mod selection;
pub mod state;
pub mod step;
pub mod view;

#[cfg(test)]
mod tests;
