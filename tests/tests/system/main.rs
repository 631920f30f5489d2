//! System tests: real nats-server processes, real PostgreSQL, services in-process.
//! One binary with a module per area (run a subset with `cargo xtask test -- <name>`).

mod clients;
mod dashboard;
mod deploy;
mod examples;
mod faults;
mod gateway;
mod harness;
mod hostile;
mod integrator;
mod matcher;
mod scaleout;
mod sessions;
mod simulator;
mod tracking;
mod trips;
