//! Sans-IO STUN/TURN server core for Duet (RFC 8489, RFC 8656, RFC 6156).
//!
//! This crate owns no sockets, tasks, files or clocks. The daemon (the *driver*) feeds it
//! bytes, events and the current time and carries out the [`Command`]s it returns.
//!
//! # Run loop
//!
//! ```text
//! let mut server = Server::new(config, Instant::now(), unix_now());
//! loop {
//!     // 1. Inputs, in any order, as they arrive:
//!     //    a) a UDP datagram, or one whole TCP/TLS frame (framing::stream_frame_len), from a client:
//!     if let Some(t) = server.handle_client_input(now, five_tuple, &packet) {
//!         relay_socket[t.relay].send_to(t.payload, t.peer);   // hot path, borrows `packet`
//!     }
//!     //    b) a datagram received on a relay socket (read at buf[4..] to leave header room):
//!     match server.handle_peer_input(now, relay_addr, peer, len) {
//!         Some(ClientDelivery::ChannelData { to, channel }) => {
//!             channel::write_channel_data_header(&mut buf, channel, len as u16);
//!             send(to, &buf[..4 + len]);              // + padding to 4 on TCP/TLS
//!         }
//!         Some(ClientDelivery::DataIndication { to }) => {
//!             encode_data_indication(peer, &buf[4..4 + len], &mut scratch);
//!             send(to, &scratch);
//!         }
//!         None => {}                                   // dropped and counted
//!     }
//!     //    c) a TCP/TLS client connection closed:   server.handle_client_closed(now, five_tuple)
//!     //    d) booking cancelled:                   server.revoke_booking(now, booking, until)
//!     // 2. Drain commands after every input:
//!     while let Some(cmd) = server.poll_command() {
//!         match cmd {
//!             Command::SendToClient { to, message } => send(to, &message),
//!             Command::BindRelay { pending, family, even_port } => {
//!                 // bind a UDP socket (may be async); later, with the result:
//!                 server.handle_relay_bound(now, pending, Ok((bound, advertised)));  // or Err(())
//!             }
//!             Command::FreeRelay { relay } => close(relay),
//!         }
//!     }
//!     // 3. Sleep until the next input or server.poll_timeout(); when it passes:
//!     server.handle_timeout(now, unix_now());            // then drain commands again
//! }
//! ```
//!
//! `now` is a monotonic [`std::time::Instant`]; `unix_now` a [`std::time::Duration`] since the Unix
//! epoch, given to [`Server::new`] and every [`Server::handle_timeout`]; the server maps one to
//! the other in between (credential expiry is in Unix seconds, everything else is monotonic).
//!
//! # Invariants
//!
//! - No input panics: decoders are bounded, malformed input is dropped and counted in
//!   [`Stats`]; protocol failures are STUN error responses.
//! - The hot path ([`Server::handle_client_input`] for ChannelData / Send, and
//!   [`Server::handle_peer_input`]) does not allocate and costs O(1) hash lookups.
//! - Every TURN request (Allocate, Refresh, CreatePermission, ChannelBind) is authenticated with
//!   the long-term mechanism on TURN REST credentials, and the HMAC, the credential expiry and
//!   the booking's revocation are checked on each one (DESIGN §4). Nonces are stateless; no state
//!   is kept per client before it authenticates except a fixed-size hashed 401 rate limiter
//!   (UDP only: replies on TCP/TLS are never suppressed).
//!   Legacy static credentials ([`StaticCredential`], `vy` mode only) are looked up first, in
//!   constant time; they never expire but have their own allocation quota.
//! - An allocation ends when its lifetime passes, on Refresh 0, when its credential expiry (the
//!   booking's hard end) passes, on [`Server::revoke_booking`], when its static credential is
//!   removed ([`Server::set_static_credentials`]), or when its TCP/TLS connection closes; each
//!   end emits exactly one [`Command::FreeRelay`] for a bound relay socket.
//! - Data is relayed only between a client and peers it holds a live permission for; peers pass
//!   the [`policy::PeerPolicy`] (deny by default) when the permission is installed.
//! - Relayed bytes pass token buckets on the `now` arguments: per allocation and direction
//!   ([`ServerConfig::max_bytes_per_second_per_allocation`]) and server-wide
//!   ([`ServerConfig::max_bytes_per_second_total`]); over a cap, datagrams are dropped and
//!   counted ([`Stats::drops_bandwidth`]).
//! - [`Server::poll_timeout`] is never later than the next deadline (it may be earlier).
//!
//! # Modules
//!
//! [`stun`] codec and RFC 5769 vectors, [`channel`] ChannelData, [`framing`] TCP/TLS framing,
//! [`auth`] credentials and nonces, [`policy`] peer policy, [`ratelimit`] per-source rate
//! limiter, [`server`] the state machine.

#![deny(unsafe_code)]

pub mod auth;
pub mod channel;
pub mod framing;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod stun;

pub use auth::{NonceCodec, RestUsername, long_term_key, rest_password};
pub use channel::{ChannelNumber, write_channel_data_header};
pub use framing::{FramingError, stream_frame_len};
pub use policy::{IpNet, PeerDenied, PeerPolicy};
pub use ratelimit::SourceRateLimiter;
pub use server::{
    AddressFamily, AllocationEvent, AllocationUsage, ClientDelivery, Command, FiveTuple, PeerTransmit,
    PendingAllocation, Server, ServerConfig, StaticCredential, Stats, Transport, encode_data_indication,
};
