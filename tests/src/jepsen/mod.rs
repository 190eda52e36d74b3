//! A Jepsen-style test of a Grape cluster: clients record what they did and saw
//! ([`history`]), a nemesis injects faults ([`nemesis`]), and a checker decides whether the
//! history is one Grape's promises allow ([`checker`]). `grape-jepsen` runs it.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod workload;
