//! Duet: self-hosted call infrastructure for scheduled 1-on-1 video meetings.
//!
//! One daemon runs a WebSocket signaling hub (driving the sans-IO [`duet_signaling::Hub`]), an integrated STUN/TURN
//! relay (driving the sans-IO [`duet_relay::server::Server`]) and a thin booking service that issues room tokens and
//! per-booking TURN credentials only inside a meeting's join window. This crate is the only one with tokio,
//! sockets, clocks, files and SQL; see `DESIGN.md` §1.

pub mod admin;
pub mod api_key;
pub mod app;
pub mod booking;
pub mod cli;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod data_dir;
pub mod http_serve;
pub mod metrics;
pub mod openapi;
pub mod relay_io;
pub mod scheduling;
pub mod signal_io;
