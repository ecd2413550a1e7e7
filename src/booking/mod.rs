//! The thin booking service: REST API, store, join window, tokens (DESIGN §6).

pub mod admin_api;
pub mod api;
pub mod catalog;
pub mod catalog_api;
pub mod store;
pub mod tokens;
pub mod window;
