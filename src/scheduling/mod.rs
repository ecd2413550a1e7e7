//! Scheduling cores without IO: availability and free slots of a host (README, "Hosts, schedules, event types and slots").
//!
//! Nothing here reads a clock, a socket or the database: the daemon loads a host's schedule, event type and busy
//! intervals, reads its clock once and passes all of it in. The same inputs always give the same slots.

pub mod slots;
