//! The parti-sim agent: one per host. Forks producer and worker processes from its own
//! binary, relays their reports to the coordinator, and executes signals on them.

#![forbid(unsafe_code)]
